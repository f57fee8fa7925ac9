"""PyTorch's RMSprop as an optax ``GradientTransformation``.

The math lives in :func:`rmsprop_math`, one function over real arrays. Every
other part of jrmsprop (pytrees, complex views, ``None`` gradients, schedules,
the stateful adapter, the parallel helpers) wraps it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jrmsprop.validation import (
    check_grad,
    check_hyperparams,
    check_leaves,
    check_pair,
    concrete_number,
    path_str,
    upcast,
)

Scalar = float | jax.Array
ScalarOrSchedule = float | jax.Array | Callable[[jax.Array], Any]


class RMSpropState(NamedTuple):
    """State of :func:`rmsprop`.

    Attributes:
      count (jax.Array): number of updates applied so far (int32 scalar); what an ``lr``
        schedule reads.
      step (jax.Array): torch's per-parameter ``state["step"]``, for all parameters in
        ONE int32 vector: ``step[i]`` is how many times leaf ``i`` of
        ``jax.tree.leaves(params)`` received a gradient. One array instead
        of one per leaf: a per-leaf counter costs a kernel, an input and an
        output per leaf in the compiled step.
      square_avg (PyTree): per parameter, the running average of squared gradients
        (a pytree like ``params``).
      momentum_buffer (PyTree or None): per parameter, the momentum buffer; ``None`` (no
        memory) when the transformation was built with ``momentum == 0``.
      grad_avg (PyTree or None): per parameter, the running average of gradients; ``None`` (no
        memory) unless ``centered``.
    """

    count: jax.Array  # type: ignore[assignment]  # a field, shadowing tuple.count
    step: jax.Array
    square_avg: Any
    momentum_buffer: Any
    grad_avg: Any


def _hyper(value: Scalar, dtype: Any) -> Scalar:
    """A hyperparameter as the math sees it.

    Python numbers stay Python numbers (weakly typed, so derived values such
    as ``1 - alpha`` are computed in double precision, as torch computes
    them); arrays are cast to the parameter's real dtype so they never promote
    the parameter (``inject_hyperparams`` hands complex params complex
    hyperparameters).
    """
    if isinstance(value, (int, float)):
        return value
    value = jnp.asarray(value)
    if jnp.iscomplexobj(value):
        value = jnp.real(value)
    return value.astype(dtype)


def _lerp(start: jax.Array, end: jax.Array, weight: Scalar) -> jax.Array:
    """``torch.lerp`` with a scalar weight, branch for branch."""
    near = start + weight * (end - start)
    far = end - (end - start) * (1 - weight)
    if isinstance(weight, (int, float)):
        return near if weight < 0.5 else far
    return jnp.where(weight < 0.5, near, far)


def rmsprop_math(
    param: jax.Array,
    grad: jax.Array,
    square_avg: jax.Array,
    grad_avg: jax.Array | None,
    momentum_buffer: jax.Array | None,
    *,
    lr: Scalar,
    alpha: Scalar,
    eps: Scalar,
    weight_decay: Scalar,
    momentum: Scalar,
    maximize: bool,
    storage_dtype: Any = None,
    one_minus_alpha: Scalar | None = None,
    momentum_positive: bool | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array | None, jax.Array | None]:
    """One step of torch's RMSprop on one real parameter, in torch's order.

    ``grad_avg`` is ``None`` unless centered; ``momentum_buffer`` is ``None``
    unless a momentum buffer is kept. ``storage_dtype`` is the dtype the
    state is kept in when the math runs wider (float32 math for bfloat16
    state): each new state buffer is rounded to it before the rest of the
    step reads it, as torch reads it back from storage. Returns ``(update,
    square_avg, grad_avg, momentum_buffer)`` where ``param + update`` is
    torch's new parameter. ``one_minus_alpha``, when given, is ``1 - alpha``
    computed by the caller (the adapter computes it on the host in double and
    rounds it once, as torch does); by default it is computed here, in double
    for a Python ``alpha`` and in the array's dtype for a traced one.
    ``momentum_positive`` is torch's ``momentum > 0`` branch when the caller
    has decided it on the host (the adapter gives a ``momentum_buffer`` only
    then): ``True`` takes the momentum branch and ``False`` the other, with
    no run-time select even for a traced ``momentum``. ``None`` (the
    default) decides from ``momentum``: a Python number by its value, an
    array at run time (a select that costs memory traffic: its
    momentum-free branch reads the gradient and the averages again).
    """

    def stored(x: jax.Array) -> jax.Array:
        # The barrier makes XLA write each new state buffer once and read it
        # back, instead of recomputing it from the old buffer in every later
        # kernel: the old buffer is then dead when its donated memory is
        # reused, so no copy of the state and no parameter-sized temporary.
        if storage_dtype is None or x.dtype == storage_dtype:
            return jax.lax.optimization_barrier(x)
        return jax.lax.optimization_barrier(x.astype(storage_dtype)).astype(x.dtype)

    if maximize:
        grad = -grad
    if not (isinstance(weight_decay, (int, float)) and weight_decay == 0):
        grad = grad + weight_decay * param
    if one_minus_alpha is None:
        one_minus_alpha = 1 - alpha
    square_avg = square_avg * alpha + one_minus_alpha * grad * grad
    if grad_avg is not None:
        grad_avg = stored(_lerp(grad_avg, grad, one_minus_alpha))
        square_avg = stored(square_avg)
        avg = jnp.sqrt(square_avg - grad_avg * grad_avg)
    else:
        square_avg = stored(square_avg)
        avg = jnp.sqrt(square_avg)
    avg = avg + eps
    # torch's addcdiv_(g, avg, value=-lr): (-lr * g) / avg, in that order.
    if momentum_positive is None and isinstance(momentum, (int, float)):
        momentum_positive = momentum > 0
    if momentum_buffer is None or momentum_positive is False:
        # torch's rule: with momentum 0 a kept buffer is left as it is.
        update = (-lr * grad) / avg
    elif momentum_positive:
        momentum_buffer = stored(momentum_buffer * momentum + grad / avg)
        update = -lr * momentum_buffer
    else:
        # A momentum array (inject_hyperparams) may be 0 at run time: torch's rule then.
        on = momentum > 0
        momentum_buffer = stored(
            jnp.where(on, momentum_buffer * momentum + grad / avg, momentum_buffer)
        )
        update = jnp.where(on, -lr * momentum_buffer, (-lr * grad) / avg)
    return update, square_avg, grad_avg, momentum_buffer


def _components(x: jax.Array | None, is_complex: bool) -> tuple:
    """``torch.view_as_real`` for elementwise math: (real, imag) or (x,)."""
    if x is None:
        return (None, None) if is_complex else (None,)
    return (jnp.real(x), jnp.imag(x)) if is_complex else (x,)


def _join(parts: tuple, is_complex: bool) -> jax.Array | None:
    if parts[0] is None:
        return None
    return jax.lax.complex(*parts) if is_complex else parts[0]


def step_leaf(
    param, grad, square_avg, grad_avg, momentum_buffer, hyper, maximize, momentum_positive=None
):
    """:func:`rmsprop_math` on one leaf, complex leaves as (real, imag).

    float16 and bfloat16 leaves are computed in float32 and stored back in
    their dtype: torch's CPU and CUDA kernels compute half types in float32
    ("opmath") with float32 hyperparameters, and a bfloat16 ``alpha=0.99``
    would be 0.98828125. ``momentum_positive``: see :func:`rmsprop_math`.
    """
    dtype = square_avg.dtype
    is_complex = jnp.iscomplexobj(square_avg)
    real_dtype = jnp.real(square_avg).dtype
    math_dtype = jnp.float32 if jnp.finfo(real_dtype).bits < 32 else real_dtype
    args = {name: _hyper(value, math_dtype) for name, value in hyper.items()}

    def parts(x):
        return tuple(
            None if c is None else c.astype(math_dtype) for c in _components(x, is_complex)
        )

    outs = [
        rmsprop_math(
            p,
            g,
            s,
            a,
            m,
            maximize=maximize,
            storage_dtype=real_dtype,
            momentum_positive=momentum_positive,
            **args,
        )
        for p, g, s, a, m in zip(
            parts(param),
            parts(grad),
            parts(square_avg),
            parts(grad_avg),
            parts(momentum_buffer),
        )
    ]
    joined = (_join(c, is_complex) for c in zip(*outs))
    return tuple(None if x is None else x.astype(dtype) for x in joined)


def _leaves_like(treedef, tree: Any, what: str) -> list:
    """``tree``'s subtrees at the leaves of the state's ``treedef``.

    The structure is decided against the state: where the params had
    ``None`` (an empty subtree: no parameter, as in optax), ``tree`` must have
    ``None`` too; where the params had an array, ``tree`` may hold ``None``
    (a gradient that was not computed: torch's skipped parameter).
    """
    try:
        return treedef.flatten_up_to(tree)
    except (ValueError, TypeError):
        raise ValueError(
            f"rmsprop: the structure of {what} does not match the optimizer state: "
            f"{what} is {jax.tree.structure(tree, is_leaf=_is_none)}, "
            f"the optimizer state (from params at init) is {treedef}"
        ) from None


def _is_none(x: Any) -> bool:
    return x is None


def _check_state(state: Any, centered: bool, momentum: Any) -> tuple:
    """The state's leaves, each buffer checked against ``square_avg``; ``(treedef, paths)``."""
    if not isinstance(state, RMSpropState):
        raise TypeError(f"rmsprop: state must be an RMSpropState, got {type(state).__name__}")
    if centered != (state.grad_avg is not None):
        made = "rmsprop(centered=False)" if centered else "rmsprop(centered=True)"
        raise ValueError(
            f"rmsprop: state {'has no' if centered else 'has a'} grad_avg but the "
            f"transformation is{'' if centered else ' not'} centered: the state was "
            f"created by {made}"
        )
    if state.momentum_buffer is None and _wants_momentum_buffer(momentum):
        given = (
            f"momentum={momentum}"
            if _static_momentum(momentum) is not None
            else "momentum given as a JAX array (as optax.inject_hyperparams passes it)"
        )
        raise ValueError(
            f"rmsprop: {given} needs a momentum_buffer, and the state has none: it was "
            "created with momentum=0 as a number (a momentum array always gets a buffer)"
        )
    with_path, treedef = jax.tree_util.tree_flatten_with_path(state.square_avg)
    paths = [path for path, _ in with_path]
    refs = [leaf for _, leaf in with_path]
    for path, leaf in with_path:
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            raise TypeError(
                f"rmsprop: state.square_avg leaf {path_str(path)} is a {type(leaf).__name__}, "
                "not an array: each state buffer is an array of its parameter's shape and "
                "dtype (a state restored or built by hand must keep its arrays)"
            )
    for name in ("grad_avg", "momentum_buffer"):
        tree = getattr(state, name)
        if tree is None:
            continue
        for path, leaf, ref in zip(paths, _leaves_like(treedef, tree, f"state.{name}"), refs):
            if leaf is None:
                raise ValueError(f"rmsprop: state.{name} at {path_str(path)} is None")
            check_pair(path, leaf, ref, f"state.{name}", "state.square_avg")
    step = state.step
    if (
        not hasattr(step, "shape")
        or tuple(step.shape) != (len(paths),)
        or not jnp.issubdtype(step.dtype, jnp.integer)
    ):
        raise ValueError(
            f"rmsprop: state.step must be an integer vector with one entry per parameter, "
            f"shape ({len(paths)},); got {_describe_step(step)}"
        )
    return treedef, paths


def _describe_step(step: Any) -> str:
    if hasattr(step, "shape") and hasattr(step, "dtype"):
        return f"{jnp.dtype(step.dtype).name}{list(step.shape)}"
    return f"a {type(step).__name__} (a state from an older jrmsprop keeps one step per leaf)"


def _static_momentum(momentum: Any) -> float | None:
    """``momentum``'s value when it is a host value (a Python number or numpy
    scalar/array), else ``None`` (a JAX array, concrete or traced)."""
    if isinstance(momentum, (int, float, np.generic, np.ndarray)):
        return float(np.real(np.asarray(momentum)))
    return None


def _momentum_positive(momentum: Any) -> bool | None:
    """torch's ``momentum > 0`` when ``momentum``'s value can be read now, else ``None``.

    A number, or an array that is not traced (given to ``rmsprop`` as one,
    or by ``optax.inject_hyperparams`` outside ``jax.jit``): the step takes
    its branch with no run-time select, so it moves the bytes of the same
    momentum given as a Python number. A traced array: ``None``, decided at
    run time (:func:`rmsprop_math`).
    """
    if isinstance(momentum, jax.core.Tracer):
        return None
    # A host value is read in double, as torch reads it: a momentum of 1e-300 is > 0
    # although JAX (x64 off) would round it to float32's 0.
    value = _static_momentum(momentum)
    if value is None:
        value = concrete_number(momentum)
    return None if value is None else value > 0


def _wants_momentum_buffer(momentum: Any) -> bool:
    """Whether ``init`` allocates a momentum buffer: a static rule, never the trace's.

    A Python number or numpy scalar/array: when it is > 0, as torch decides.
    A JAX array (what ``optax.inject_hyperparams`` passes, and a traced
    value): always, whatever its value, since a buffer with momentum 0 gives
    torch's momentum-free steps and lets momentum be switched on later. So
    ``init`` eager, under ``jax.jit`` and under ``jax.eval_shape`` builds the
    same tree.
    """
    number = _static_momentum(momentum)
    return True if number is None else number > 0


class _DefaultLR:
    """The default of ``lr``: torch's 0.01, told apart from an ``lr`` that was given.

    A marker object, not the number: ``rmsprop(0.01, learning_rate=1e-3)``
    gives both names and is refused, whatever their values. Not a number
    either for ``optax.inject_hyperparams``, which then leaves it out of the
    state's hyperparameters: it injects the ``lr`` or ``learning_rate``
    that is given, and only that one.
    """

    value = 1e-2

    def __repr__(self) -> str:
        return repr(self.value)

    # Introspection (``inspect.signature``, docs tools) sees torch's default, 0.01.
    def __eq__(self, other: object) -> bool:
        return other is self or other == self.value

    def __hash__(self) -> int:
        return hash(self.value)

    def __float__(self) -> float:
        return self.value


_DEFAULT_LR: Any = _DefaultLR()


def _lr_or_learning_rate(lr: ScalarOrSchedule, learning_rate: ScalarOrSchedule | None):
    """The step size, from torch's ``lr`` or optax's ``learning_rate``; both is a ``TypeError``."""
    if lr is _DEFAULT_LR:
        return _DefaultLR.value if learning_rate is None else learning_rate
    if learning_rate is not None:
        raise TypeError(
            f"rmsprop: got both lr={lr!r} and learning_rate={learning_rate!r}; give one "
            "(learning_rate is optax's name for torch's lr)"
        )
    return lr


def rmsprop(
    lr: ScalarOrSchedule = _DEFAULT_LR,
    alpha: Scalar = 0.99,
    eps: Scalar = 1e-8,
    weight_decay: Scalar = 0.0,
    momentum: Scalar = 0.0,
    centered: bool = False,
    capturable: bool = False,
    foreach: bool | None = None,
    maximize: bool = False,
    differentiable: bool = False,
    *,
    learning_rate: ScalarOrSchedule | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""PyTorch's ``torch.optim.RMSprop``, number for number, as optax.

    For each parameter :math:`p` with gradient :math:`g`, in torch's order
    (the order decides rounding):

    .. math::

       g &\leftarrow -g \quad\text{if maximize} \\
       \text{step} &\leftarrow \text{step} + 1 \\
       g &\leftarrow g + \lambda p \quad\text{(coupled L2, weight\_decay } \lambda) \\
       v &\leftarrow \alpha v + (1 - \alpha) g^2 \\
       \bar g &\leftarrow \operatorname{lerp}(\bar g, g, 1 - \alpha),\;
          a = \sqrt{v - \bar g^2} \quad\text{if centered, else } a = \sqrt{v} \\
       a &\leftarrow a + \epsilon \quad\text{(eps outside the square root)} \\
       b &\leftarrow \mu b + g / a,\; p \leftarrow p - \eta b
          \quad\text{if momentum } \mu > 0 \\
       p &\leftarrow p - \eta\, g / a \quad\text{otherwise}

    Complex parameters are seen as real arrays of (real, imag) pairs, as
    ``torch.view_as_real``: each component has its own moments, so the real
    part of ``square_avg`` averages :math:`\operatorname{re}(g)^2` and its
    imaginary part :math:`\operatorname{im}(g)^2` (not :math:`|g|^2`).
    Complex parameters and ``jax.grad``: for a real loss, ``jax.grad``
    returns the conjugate of what torch puts in ``.grad``. To follow torch's
    trajectory, conjugate JAX's gradients first (for a complex least-squares
    fit, the naive port diverges where torch converges)::

      grads = jax.tree.map(jnp.conj, jax.grad(loss)(params))

    ``None`` in a pytree has two meanings, as in optax and torch:

    * ``None`` in ``params`` (an optional field, an equinox module's
      non-array field after ``eqx.filter``) is an empty subtree: no parameter,
      no state; the gradient there is ``None`` too and so is the update.
    * ``None`` as the gradient of a parameter that is an array is torch's
      ``p.grad is None``: the parameter is skipped: its update is ``-0.0``
      (so ``optax.apply_updates`` leaves it bit for bit), its state and its
      step stay as they were.

    The structure of ``grads`` is decided against the state built at
    ``init``, so the two never mix.

    How it differs from ``optax.rmsprop``, which at a constant lr gives
    torch's numbers to rounding when configured as torch (``decay=alpha``,
    ``eps_in_sqrt=False``, after ``optax.add_decayed_weights`` and, for
    maximize, ``optax.scale(-1.0)``; the README's measured table):

    * eps is added outside the square root (optax's default,
      ``eps_in_sqrt=True``, adds it inside) and ``alpha`` defaults to 0.99
      (optax's ``decay`` to 0.9);
    * the momentum buffer holds ``g / a`` and lr multiplies the whole buffer,
      so a changing lr acts on past momentum too (optax's momentum traces
      lr-scaled updates and drifts from torch under a schedule);
    * ``weight_decay`` (coupled L2) and ``maximize`` are built in;
    * complex gradients have component-wise moments (optax uses the modulus);
    * per-parameter ``step`` and skipped ``None`` gradients, as torch keeps
      them (optax needs zeros, which are a gradient, not a skip).

    Args:
      lr: learning rate: a float, a scalar array, or an optax schedule (a
        callable of the number of updates applied before this one).
      alpha: smoothing constant of the squared-gradient average.
      eps: added to the denominator, outside the square root.
      weight_decay: coupled L2 penalty (``g + weight_decay * p``); needs
        ``params`` in ``update`` when non-zero.
      momentum: momentum factor. ``init`` keeps a buffer when it is a Python
        number or numpy scalar > 0, and always when it is a JAX array (as
        ``optax.inject_hyperparams`` passes it; traced too): the state's
        structure never depends on tracing. While momentum is 0 a kept
        buffer is left as it is (torch's rule for a group's momentum set to
        0). A momentum array over a state made with momentum 0 (a number)
        is a ``ValueError``.
      centered: normalize by the variance estimate instead of the second moment.
      capturable: torch's CUDA-graph flag. Accepted, no effect: a jitted step
        is always one captured program, with ``step`` kept on the device.
      foreach: torch's choice of kernel (for-loop or multi-tensor). Accepted,
        no effect: XLA compiles and fuses the whole step; torch's two kernels
        give the same numbers up to rounding, and so does this one.
      maximize: maximize the objective instead of minimizing it.
      differentiable: torch's flag for autograd through ``step``. Accepted,
        no effect: ``update`` is always differentiable with ``jax.grad``.
      learning_rate: optax's name for ``lr`` (keyword only), so optax code
        such as ``optax.inject_hyperparams(jrmsprop.rmsprop)(learning_rate=1e-3)``
        and ``optax.tree_utils.tree_get(state, "learning_rate")`` runs
        unchanged. Give ``lr`` or ``learning_rate``, not both: both is a
        ``TypeError``, whatever their values (``lr=0.01`` included).
        ``inject_hyperparams`` injects the one given, under its name; when
        neither is given the lr is 0.01 and not injected (give one to change
        it between steps).

    The positional order is ``torch.optim.RMSprop``'s (after ``params``).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is
      :class:`RMSpropState`. ``update(grads, state, params=None, **extra_args)``
      accepts and ignores optax's extra arguments (``value``, ...), so it
      chains with transformations that read them.

    Example::

      >>> import jax.numpy as jnp, optax, jrmsprop
      >>> params = {"w": jnp.ones(3)}
      >>> opt = jrmsprop.rmsprop(lr=0.1, momentum=0.9)
      >>> state = opt.init(params)
      >>> grads = {"w": jnp.array([1.0, -2.0, 0.5])}
      >>> updates, state = opt.update(grads, state, params)
      >>> params = optax.apply_updates(params, updates)
    """
    lr = _lr_or_learning_rate(lr, learning_rate)
    check_hyperparams(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum)
    del capturable, foreach, differentiable  # accepted for torch's signature; see Args
    momentum_positive = _momentum_positive(momentum)

    def init_fn(params: Any) -> RMSpropState:
        check_leaves(params, "params")

        def zeros():
            return jax.tree.map(jnp.zeros_like, params)

        return RMSpropState(
            count=jnp.zeros([], jnp.int32),
            step=jnp.zeros([len(jax.tree.leaves(params))], jnp.int32),
            square_avg=zeros(),
            momentum_buffer=zeros() if _wants_momentum_buffer(momentum) else None,
            grad_avg=zeros() if centered else None,
        )

    def update_fn(
        updates: Any, state: RMSpropState, params: Any = None, **extra_args: Any
    ) -> tuple[Any, RMSpropState]:
        del extra_args  # optax's extra-arguments protocol: RMSprop reads none of them
        treedef, paths = _check_state(state, centered, momentum)
        grads = _leaves_like(treedef, updates, "grads")
        square_avgs = treedef.flatten_up_to(state.square_avg)
        for path, g, s in zip(paths, grads, square_avgs):
            check_grad(path, g, s, "grads", "the optimizer state")
        # Narrower gradients (bfloat16 for float32 params, ...) upcast losslessly.
        grads = [upcast(g, s.dtype) for g, s in zip(grads, square_avgs)]
        param_leaves = _param_leaves(treedef, paths, params, square_avgs)
        decay = weight_decay if params is not None else _decay_without_params(weight_decay)

        def leaves_or_nones(tree):
            return [None] * len(paths) if tree is None else treedef.flatten_up_to(tree)

        hyper = {
            "lr": lr(state.count) if callable(lr) else lr,
            "alpha": alpha,
            "eps": eps,
            "weight_decay": decay,
            "momentum": momentum,
        }
        outs = [
            # torch skips a parameter without a gradient: no update, no state change.
            (jnp.full_like(s, -0.0), s, a, m)
            if g is None
            else step_leaf(p, g, s, a, m, hyper, maximize, momentum_positive)
            for p, g, s, a, m in zip(
                param_leaves,
                grads,
                square_avgs,
                leaves_or_nones(state.grad_avg),
                leaves_or_nones(state.momentum_buffer),
            )
        ]
        columns = list(zip(*outs)) or [()] * 4
        new_updates, new_sq, new_ga, new_buf = (
            jax.tree.unflatten(treedef, list(leaves)) for leaves in columns
        )
        stepped = np.array([g is not None for g in grads], np.int32)
        new_state = RMSpropState(
            count=optax.safe_increment(state.count),
            # Saturates at int32's largest value, as optax.safe_increment does for count.
            step=state.step + stepped * (state.step < jnp.iinfo(jnp.int32).max),
            square_avg=new_sq,
            momentum_buffer=None if state.momentum_buffer is None else new_buf,
            grad_avg=None if state.grad_avg is None else new_ga,
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _decay_without_params(weight_decay: Scalar) -> float:
    """``weight_decay`` for an update without params: ``0.0``, or a ``ValueError``.

    A zero array (``optax.inject_hyperparams`` passes every hyperparameter
    as one) counts as zero when its value can be read; a traced one cannot be
    read, and a non-zero one needs the params it multiplies.
    """
    if isinstance(weight_decay, (int, float)) and weight_decay == 0:
        return weight_decay
    value = concrete_number(weight_decay)
    if value == 0:
        return 0.0
    if value is None:
        raise ValueError(
            "rmsprop: weight_decay is a traced array (optax.inject_hyperparams under jax.jit "
            "passes it so), whose value cannot be read while tracing: its L2 term may need "
            "params. Call update(grads, state, params), or make it static: "
            "optax.inject_hyperparams(jrmsprop.rmsprop, static_args=('weight_decay',))"
        )
    raise ValueError(
        f"rmsprop: weight_decay={value:.6g} needs params (its L2 term is weight_decay * params): "
        "call update(grads, state, params)"
    )


def _param_leaves(treedef, paths, params, square_avgs) -> list:
    """The params' leaves, checked against the state; ``None``s when not given."""
    if params is None:
        return [None] * len(paths)
    leaves = _leaves_like(treedef, params, "params")
    for path, p, s in zip(paths, leaves, square_avgs):
        if p is None:
            raise ValueError(f"rmsprop: params leaf {path_str(path)} is None")
        check_pair(path, p, s, "params", "the optimizer state")
    return leaves
