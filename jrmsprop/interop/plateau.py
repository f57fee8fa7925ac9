"""``torch.optim.lr_scheduler.ReduceLROnPlateau`` kept in torch, its lr fed to JAX.

A plateau scheduler's lr follows a metric, not the step, so it is not turned into
an optax schedule. The torch scheduler itself stays the controller: the JAX
run's ``tx`` (from :func:`jrmsprop.interop.from_torch`) carries each group's lr
in its state (``optax.inject_hyperparams``); after each ``scheduler.step(metric)``
:func:`follow` copies the groups' lrs into that state. torch's own arithmetic
decides every reduction (``mode``, ``threshold_mode``, ``cooldown``, ``min_lr``,
``eps``), and its counters (``best``, ``num_bad_epochs``, ``cooldown_counter``,
``last_epoch``) are the scheduler's own, so :func:`jrmsprop.interop.to_torch`
has nothing to carry back but the parameters and the optimizer state.

Why not ``optax.contrib.reduce_on_plateau``: it reduces when its count of bad
values reaches ``patience`` (torch: when it exceeds it), cannot express torch's
``mode="max"`` with ``threshold_mode="rel"`` (its ``rtol`` must be >= 0), has no
``eps`` and one ``min_scale`` for all groups where torch has a ``min_lr`` per
group, and with ``accumulation_size`` > 1 applies a reduction to the update
that brings the last value, not to the next epoch's first.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from jrmsprop.interop._torch import _import_torch


def is_plateau(scheduler: Any) -> bool:
    """Whether ``scheduler`` is a ``ReduceLROnPlateau`` (an object, or ``(class, state)``)."""
    if scheduler is None:
        return False
    cls = scheduler[0] if isinstance(scheduler, tuple) else type(scheduler)
    return cls is _import_torch().optim.lr_scheduler.ReduceLROnPlateau


def _lr_leaves(opt_state: Any) -> list:
    """The paths of every injected ``lr`` in ``opt_state``, in group order."""
    flat = jax.tree_util.tree_flatten_with_path(opt_state)[0]
    return [
        path
        for path, _ in flat
        if len(path) >= 2
        and path[-1] == jax.tree_util.DictKey("lr")
        and path[-2] == jax.tree_util.GetAttrKey("hyperparams")
    ]


def follow(opt_state: Any, scheduler: Any) -> Any:
    """``opt_state`` with each param group's lr set to the torch optimizer's current lr.

    Call it after each ``scheduler.step(metric)`` of the ``ReduceLROnPlateau``
    given to :func:`jrmsprop.interop.from_torch` (whose ``tx`` carries the lrs
    in its state).

    Args:
      opt_state: the JAX run's state (``tx``'s, or an optax state holding it).
      scheduler: the ``ReduceLROnPlateau``.

    Returns:
      The state with the new lrs (in each lr's dtype).

    Raises:
      ValueError: a state with no lr per param group of the scheduler's optimizer.
    """
    lrs = [float(group["lr"]) for group in scheduler.optimizer.param_groups]
    paths = _lr_leaves(opt_state)
    if len(paths) != len(lrs):
        raise ValueError(
            f"follow: the optimizer has {len(lrs)} param groups, the state carries "
            f"{len(paths)} lrs: give the state of the tx from_torch built with this "
            "ReduceLROnPlateau"
        )
    new = dict(zip(paths, lrs))
    return jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.asarray(new[path], jnp.asarray(x).dtype) if path in new else x,
        opt_state,
    )


def check_followed(opt_state: Any, optimizer: Any, who: str) -> None:
    """Raises unless the state's lrs are the optimizer's (rounded to the state's dtype)."""
    paths = _lr_leaves(opt_state)
    leaves = dict(jax.tree_util.tree_flatten_with_path(opt_state)[0])
    ours = [leaves[path] for path in paths]
    theirs = [group["lr"] for group in optimizer.param_groups]
    if len(ours) != len(theirs) or any(
        float(a) != float(jnp.asarray(b, jnp.asarray(a).dtype)) for a, b in zip(ours, theirs)
    ):
        raise ValueError(
            f"{who}: the state's lrs {[float(a) for a in ours]} are not the optimizer's "
            f"{theirs} as the ReduceLROnPlateau left them: call "
            "jrmsprop.interop.plateau.follow(opt_state, scheduler) after each "
            "scheduler.step(metric)"
        )


def injected(make: Any, hyperparams: dict) -> optax.GradientTransformation:
    """``make(**hyperparams)`` with ``lr`` in the state, every other hyperparameter static."""
    static = tuple(k for k in hyperparams if k != "lr")
    return optax.inject_hyperparams(make, static_args=static)(**hyperparams)
