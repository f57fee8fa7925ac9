"""Sharding helpers for data-parallel training with :func:`jrmsprop.rmsprop`.

RMSprop's math is elementwise, so its state can be laid out over devices any
way one likes without changing a number: each device steps its own slice of
``square_avg`` / ``momentum_buffer`` / ``grad_avg`` against the matching slice
of the (already averaged) gradient. These helpers pick that layout:

* ZeRO-1 (optimizer-state sharding): :func:`shard_state` splits every state
  leaf over the data axis of a mesh where its shape allows it and replicates
  the rest.
* FSDP-style (fully sharded params): :func:`shard_params` applies the same
  rule to the parameters; ``jax.jit`` then gathers them where the forward
  pass needs them whole.

The default rule, :func:`largest_divisible`: split each array leaf along its
largest dimension that the axis size divides (a ``50257 x 64`` vocabulary
embedding splits along its width on 2, 4 or 8 devices); replicate a leaf with
no such dimension (scalars, odd sizes). The ``count`` and ``step`` fields of
:class:`~jrmsprop.RMSpropState` are always replicated, whatever the rule: they
are a few bytes, and every device reads them. :func:`replicated_leaves` lists
what stays whole, ``shard_state`` / ``shard_params`` warn when that is large,
and ``rule=`` takes any other rule.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec

from jrmsprop.transform import RMSpropState
from jrmsprop.validation import path_str

__all__ = [
    "WARN_BYTES",
    "Rule",
    "bytes_per_device",
    "largest_divisible",
    "replicate",
    "replicated_leaves",
    "shard_params",
    "shard_state",
    "split_shardings",
]

Rule = Callable[[str, tuple, str, int], PartitionSpec]
"""``rule(path, shape, axis, size) -> PartitionSpec`` for one array leaf.

``path`` is the leaf's key path as written (``.square_avg['embed']``),
``shape`` its shape, ``axis`` the mesh axis name and ``size`` that axis's
size. Return ``PartitionSpec()`` to replicate the leaf.
"""

WARN_BYTES = 1 << 20
"""Default threshold of :func:`shard_state` / :func:`shard_params`: warn when the
leaves kept whole on every device hold more than this many bytes (1 MiB)."""

# RMSpropState fields every device reads whole: the update count (what an lr
# schedule reads) and the per-parameter steps (a 0-d int32 per leaf, or one
# int32 vector with an entry per leaf). Splitting them would save nothing.
_ALWAYS_WHOLE = ("count", "step")


def largest_divisible(path: str, shape: tuple, axis: str, size: int) -> PartitionSpec:
    """The default rule: split the largest dimension that ``size`` divides.

    Ties go to the first such dimension; a leaf with no such dimension
    (a scalar, a ``(3,)`` bias on 4 devices) is replicated.

    Args:
      path: the leaf's key path (unused by this rule; part of the signature).
      shape: the leaf's shape.
      axis: the mesh axis name.
      size: the size of that axis.

    Returns:
      ``PartitionSpec`` naming ``axis`` at the chosen dimension, or
      ``PartitionSpec()``.

    Example::

      >>> import jrmsprop
      >>> tuple(jrmsprop.parallel.largest_divisible(".square_avg['embed']", (50257, 64), "data", 4))
      (None, 'data')
    """
    del path
    fits = [d for d, n in enumerate(shape) if n % size == 0]
    if not fits:
        return PartitionSpec()
    dim = max(fits, key=lambda d: (shape[d], -d))
    return PartitionSpec(*([None] * dim), axis)


def _axis_size(mesh: Mesh, axis: str) -> int:
    if axis not in mesh.shape:
        raise ValueError(
            f"jrmsprop: mesh has no axis {axis!r}; its axes are {tuple(mesh.axis_names)}"
        )
    return mesh.shape[axis]


def _shape(path: str, leaf: Any) -> tuple:
    shape = getattr(leaf, "shape", None)
    if shape is None:
        raise TypeError(
            f"jrmsprop: cannot shard {path}, a {type(leaf).__name__}; expected an array leaf"
        )
    return tuple(shape)


def _checked(spec: Any, path: str, shape: tuple, mesh: Mesh) -> PartitionSpec:
    """``spec`` if it can lay out ``shape`` on ``mesh``; otherwise a ValueError naming the leaf."""
    if not isinstance(spec, PartitionSpec):
        raise TypeError(
            f"jrmsprop: the rule returned a {type(spec).__name__} for {path}; "
            "expected a PartitionSpec"
        )
    if len(spec) > len(shape):
        raise ValueError(f"jrmsprop: {spec} has more entries than {path} of shape {shape}")
    used: dict[str, int] = {}
    for dim, names in enumerate(spec):
        if names is PartitionSpec.UNCONSTRAINED:
            raise ValueError(
                f"jrmsprop: the rule's {spec} for {path} leaves dimension {dim} "
                "unconstrained; a layout that places arrays (device_put, jit's in_shardings "
                "and out_shardings) names each dimension's mesh axes, or None to keep it whole "
                "(P.UNCONSTRAINED is for jax.lax.with_sharding_constraint inside a jitted function)"
            )
        names = () if names is None else (names,) if isinstance(names, str) else tuple(names)
        for name in names:
            _axis_size(mesh, name)
            if name in used:
                raise ValueError(
                    f"jrmsprop: the rule's {spec} for {path} splits dimensions {used[name]} "
                    f"and {dim} over the same mesh axis {name!r}; a mesh axis can split one "
                    "dimension of a leaf"
                )
            used[name] = dim
        parts = math.prod(mesh.shape[name] for name in names)
        if shape[dim] % parts:
            raise ValueError(
                f"jrmsprop: {spec} splits dimension {dim} of {path} (shape {shape}) "
                f"into {parts} parts, which does not divide {shape[dim]}"
            )
    return spec


def _specs(tree: Any, mesh: Mesh, axis: str, rule: Rule) -> Any:
    """A pytree of PartitionSpecs: ``rule`` per leaf, RMSpropState's count and step whole."""
    size = _axis_size(mesh, axis)

    def leaf_spec(path: tuple, leaf: Any) -> PartitionSpec:
        where = path_str(path)
        shape = _shape(where, leaf)
        return _checked(rule(where, shape, axis, size), where, shape, mesh)

    def whole_spec(path: tuple, leaf: Any) -> PartitionSpec:
        _shape(path_str(path), leaf)
        return PartitionSpec()

    def node_spec(path: tuple, node: Any) -> Any:
        if not isinstance(node, RMSpropState):
            return leaf_spec(path, node)
        fields = {}
        for name, value in node._asdict().items():
            prefix = (*path, jax.tree_util.GetAttrKey(name))
            spec = whole_spec if name in _ALWAYS_WHOLE else leaf_spec
            fields[name] = jax.tree_util.tree_map_with_path(
                lambda p, leaf, prefix=prefix, spec=spec: spec((*prefix, *p), leaf), value
            )
        return RMSpropState(**fields)

    return jax.tree_util.tree_map_with_path(
        node_spec, tree, is_leaf=lambda node: isinstance(node, RMSpropState)
    )


def split_shardings(
    tree: Any, mesh: Mesh, axis: str = "data", rule: Rule = largest_divisible
) -> Any:
    """The ZeRO/FSDP layout of a pytree, as a matching pytree of shardings.

    Each array leaf is laid out by ``rule`` (by default split along its
    largest dimension that the size of ``axis`` divides, replicated when
    there is none); the ``count`` and ``step`` fields of every
    :class:`~jrmsprop.RMSpropState` in ``tree`` are replicated whatever the
    rule. ``None`` subtrees (an unused ``momentum_buffer``) stay ``None``.
    Pass the result as ``in_shardings`` / ``out_shardings`` of ``jax.jit`` to
    keep a train step's state in this layout, or as the ``sharding`` of the
    ``jax.ShapeDtypeStruct`` target of an orbax restore to load a checkpoint
    onto this mesh.

    Args:
      tree: a pytree of arrays (or ``jax.ShapeDtypeStruct``), e.g. an
        :class:`~jrmsprop.RMSpropState`, the state of an ``optax.chain`` or a
        params dict.
      mesh: the device mesh (or a ``jax.sharding.AbstractMesh``: a layout
        needs no devices).
      axis: name of the mesh axis the batch is split over.
      rule: ``rule(path, shape, axis, size) -> PartitionSpec`` per leaf
        (see :data:`Rule`); :func:`largest_divisible` by default.

    Returns:
      A pytree with the structure of ``tree`` and a ``NamedSharding`` per leaf.

    Raises:
      ValueError: ``axis`` (or an axis the rule names) is not an axis of
        ``mesh``, or the rule's spec does not divide a leaf's shape, names
        one mesh axis for two dimensions, or leaves a dimension
        ``P.UNCONSTRAINED`` (the error names the leaf).
      TypeError: a leaf is not an array, or the rule returned no PartitionSpec.

    Example::

      >>> import jax, jax.numpy as jnp, jrmsprop
      >>> params = {"embed": jnp.ones((8, 4)), "scale": jnp.ones(3)}
      >>> opt = jrmsprop.rmsprop(lr=0.1, momentum=0.9)
      >>> mesh = jax.make_mesh((1,), ("data",))
      >>> layout = jrmsprop.split_shardings(opt.init(params), mesh, "data")
      >>> tuple(layout.square_avg["embed"].spec)  # one device: the first dimension is split
      ('data',)
    """
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), _specs(tree, mesh, axis, rule))


def replicated_leaves(
    tree: Any, mesh: Mesh, axis: str = "data", rule: Rule = largest_divisible
) -> dict:
    """The leaves :func:`split_shardings` keeps whole on every device, and their bytes.

    What ZeRO-1 / FSDP do not save: each of these leaves costs its full size
    on every device. Check it on a new model before trusting the saving.

    Args:
      tree: a pytree of arrays (or ``jax.ShapeDtypeStruct``).
      mesh: the device mesh (or a ``jax.sharding.AbstractMesh``).
      axis: name of the mesh axis.
      rule: the rule, as in :func:`split_shardings`.

    Returns:
      ``{path: bytes}`` for every leaf laid out with ``PartitionSpec()``, in
      leaf order, e.g. ``{".count": 4, ".square_avg['scale']": 24}``.

    Example::

      >>> import jax, jax.numpy as jnp, jrmsprop
      >>> params = {"embed": jnp.ones((8, 4)), "scale": jnp.ones(3)}
      >>> opt = jrmsprop.rmsprop(lr=0.1, momentum=0.9)
      >>> mesh = jax.make_mesh((1,), ("data",))
      >>> jrmsprop.parallel.replicated_leaves(opt.init(params), mesh, "data")
      {'.count': 4, '.step': 8}
    """
    specs = jax.tree_util.tree_leaves_with_path(_specs(tree, mesh, axis, rule))
    return {
        path_str(path): math.prod(leaf.shape) * jnp.dtype(leaf.dtype).itemsize
        for (path, spec), leaf in zip(specs, jax.tree.leaves(tree))
        if not any(spec)
    }


def _concrete(mesh: Any, who: str) -> None:
    """``TypeError`` for an ``AbstractMesh``: placing arrays needs devices."""
    if isinstance(mesh, AbstractMesh):
        raise TypeError(
            f"jrmsprop.{who} places arrays on devices and needs a jax.sharding.Mesh; got an "
            "AbstractMesh, which has no devices. Build the mesh with jax.make_mesh, or, for a "
            "layout without devices (an orbax restore target), use jrmsprop.split_shardings, "
            "which takes an AbstractMesh"
        )


def _place(tree: Any, mesh: Mesh, axis: str, rule: Rule, warn_bytes: int | None) -> Any:
    if warn_bytes is not None:
        whole = replicated_leaves(tree, mesh, axis, rule)
        if sum(whole.values()) > warn_bytes:
            largest = sorted(whole.items(), key=lambda item: -item[1])[:3]
            warnings.warn(
                f"jrmsprop: {sum(whole.values())} bytes in {len(whole)} leaves stay whole on "
                f"each device of axis {axis!r} (largest: "
                + ", ".join(f"{path} {n} bytes" for path, n in largest)
                + "); see jrmsprop.parallel.replicated_leaves, or pass rule=",
                stacklevel=3,
            )
    return jax.device_put(tree, split_shardings(tree, mesh, axis, rule))


def shard_state(
    state: Any,
    mesh: Mesh,
    axis: str = "data",
    rule: Rule = largest_divisible,
    warn_bytes: int | None = WARN_BYTES,
) -> Any:
    """ZeRO-1: places an optimizer state split over the data axis of ``mesh``.

    Every leaf is laid out as :func:`split_shardings` says: split along its
    largest dimension the axis size divides, replicated when there is none;
    ``count`` and ``step`` replicated. Per device the optimizer state then
    takes ``1 / mesh.shape[axis]`` of its memory plus the leaves kept whole
    (:func:`replicated_leaves`), and ``rmsprop(...).update`` under
    ``jax.jit`` gives the same numbers as the unsharded run, since the math
    is elementwise.

    Args:
      state: an optimizer state (any pytree of arrays; typically
        :class:`~jrmsprop.RMSpropState` or the state of an ``optax.chain``).
      mesh: the device mesh.
      axis: name of the mesh axis to split over.
      rule: the layout rule, as in :func:`split_shardings`.
      warn_bytes: warn (``UserWarning``) when the leaves kept whole hold more
        than this many bytes; ``None`` never warns.

    Returns:
      ``state`` with each leaf placed by ``jax.device_put`` in that layout.

    Raises:
      ValueError: ``axis`` is not an axis of ``mesh``, or the rule's spec
        does not fit a leaf (see :func:`split_shardings`).
      TypeError: ``mesh`` is an ``AbstractMesh`` (placing needs devices).

    Example::

      >>> import jax, jax.numpy as jnp, jrmsprop
      >>> mesh = jax.make_mesh((jax.device_count(),), ("data",))
      >>> opt = jrmsprop.rmsprop(lr=0.1, momentum=0.9)
      >>> state = jrmsprop.shard_state(opt.init({"w": jnp.ones((8, 4))}), mesh, "data")
    """
    _concrete(mesh, "shard_state")
    return _place(state, mesh, axis, rule, warn_bytes)


def shard_params(
    params: Any,
    mesh: Mesh,
    axis: str = "data",
    rule: Rule = largest_divisible,
    warn_bytes: int | None = WARN_BYTES,
) -> Any:
    """FSDP-style: places parameters split over the data axis of ``mesh``.

    The same rule as :func:`shard_state`. Combine both (``shard_params`` for
    the params, ``shard_state`` for ``opt.init(params)``) and keep the layout
    with ``out_shardings=split_shardings(...)`` in ``jax.jit``: XLA gathers a
    parameter where the forward pass needs it whole and steps each slice
    where it lives.

    Args:
      params: a pytree of parameter arrays.
      mesh: the device mesh.
      axis: name of the mesh axis to split over.
      rule: the layout rule, as in :func:`split_shardings`.
      warn_bytes: warn (``UserWarning``) when the leaves kept whole hold more
        than this many bytes; ``None`` never warns.

    Returns:
      ``params`` placed in that layout.

    Raises:
      ValueError: ``axis`` is not an axis of ``mesh``, or the rule's spec
        does not fit a leaf (see :func:`split_shardings`).
      TypeError: ``mesh`` is an ``AbstractMesh`` (placing needs devices).
    """
    _concrete(mesh, "shard_params")
    return _place(params, mesh, axis, rule, warn_bytes)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a full copy of every leaf of ``tree`` on every device of ``mesh``.

    The replacement for the removed ``jax.device_put_replicated`` when the
    consumer is ``jax.jit`` or ``jax.shard_map`` (for ``jax.pmap``, stack the
    copies along a new leading axis instead).

    Args:
      tree: a pytree of arrays.
      mesh: the device mesh.

    Returns:
      ``tree`` with each leaf replicated over ``mesh``.

    Raises:
      TypeError: ``mesh`` is an ``AbstractMesh`` (placing needs devices).
    """
    _concrete(mesh, "replicate")
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def bytes_per_device(tree: Any) -> dict:
    """Bytes of ``tree`` held by each addressable device, from its shards.

    Counts ``addressable_shards`` of every array leaf, so it shows what
    :func:`shard_state` saves: a replicated leaf costs its full size on each
    device, a split one ``1 / axis_size`` of it.

    Args:
      tree: a pytree of ``jax.Array``.

    Returns:
      ``{device: bytes}`` over the devices that hold a shard.
    """
    totals: dict = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            totals[shard.device] = totals.get(shard.device, 0) + shard.data.nbytes
    return totals
