"""Checks and torch's error wording, shared by the transformation, the adapter and interop.

Everything here runs on the host before any computation starts: a call that
is refused has changed nothing.
"""

from __future__ import annotations

import contextlib
import math
import operator
from collections.abc import Iterator, Mapping, Sequence
from itertools import chain, compress, repeat
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# torch.optim.RMSprop's messages for a negative (or NaN) hyperparameter, word for word.
HYPERPARAM_ERRORS = {
    "lr": "Invalid learning rate: {}",
    "eps": "Invalid epsilon value: {}",
    "momentum": "Invalid momentum value: {}",
    "weight_decay": "Invalid weight_decay value: {}",
    "alpha": "Invalid alpha value: {}",
}
HYPER_NAMES = tuple(HYPERPARAM_ERRORS)

SUPPORTED_DTYPES = "float16, bfloat16, float32, float64, complex64 or complex128"


def concrete_number(x: Any) -> float | None:
    """The real value of a number or array, or ``None`` when it is traced."""
    try:
        return float(jnp.real(jnp.asarray(x)))
    except jax.errors.ConcretizationTypeError:
        return None


def check_hyperparams(**hyperparams: Any) -> None:
    """Raises torch's ``ValueError`` for a negative (or NaN) hyperparameter.

    Values that are traced (inside ``jit``/``grad``) or schedules are skipped:
    they cannot be read here.
    """
    for name, message in HYPERPARAM_ERRORS.items():
        value = hyperparams.get(name)
        if value is None or callable(value):
            continue
        if isinstance(value, (str, bytes)):
            raise TypeError(f"{name} must be a real number, got the string {value!r}")
        number = concrete_number(value)
        if number is not None and not 0.0 <= number:
            raise ValueError(message.format(number))


def path_str(path) -> str:
    """A pytree key path as the user writes it (``['w'][0]``), ``<root>`` for the root."""
    return jax.tree_util.keystr(path) or "<root>"


def describe(x: Any) -> str:
    """``float32[3, 2]`` for an array, the type name otherwise."""
    if x is None:
        return "None"
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return f"{jnp.dtype(x.dtype).name}{list(x.shape)}"
    return type(x).__name__


_OPTIMIZABLE = frozenset(
    jnp.dtype(d)
    for d in (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64, jnp.complex64, jnp.complex128)
)

# Per parameter dtype, the narrower gradient dtypes whose every value it holds
# exactly: they are upcast (``astype``) before the step, so the step sees the
# very numbers of the gradient. float16 and bfloat16 hold values the other
# cannot, so neither upcasts to the other.
UPCASTS = {
    jnp.dtype(param): frozenset(map(jnp.dtype, grads))
    for param, grads in (
        (jnp.float32, (jnp.float16, jnp.bfloat16)),
        (jnp.float64, (jnp.float16, jnp.bfloat16, jnp.float32)),
        (jnp.complex128, (jnp.complex64,)),
    )
}


def is_optimizable(dtype: Any) -> bool:
    """Whether RMSprop steps arrays of ``dtype``: float16, bfloat16, float32,
    float64, complex64, complex128 (not integers, booleans, float8 or float4)."""
    if dtype is None:
        return False
    try:
        return jnp.dtype(dtype) in _OPTIMIZABLE
    except TypeError:
        return False


def native(dtype: Any) -> Any:
    """``dtype`` in the machine's byte order: numpy's ``>f4`` (a big-endian
    file) is ``float32``, which is the only byte order JAX computes in."""
    dtype = np.dtype(dtype)
    return dtype if dtype.isnative else dtype.newbyteorder("=")


def _big_endian(leaf: Any) -> str:
    """`` (big-endian >f4: ...)`` for a non-native numpy leaf, else ``""``."""
    dtype = getattr(leaf, "dtype", None)
    if not isinstance(dtype, np.dtype) or dtype.isnative:
        return ""
    return (
        f" in non-native byte order ({dtype.str}, e.g. read from a big-endian file), which "
        f"JAX cannot hold: convert it with x.astype(x.dtype.newbyteorder('='))"
    )


def check_leaves(tree: Any, what: str, who: str = "rmsprop") -> None:
    """``TypeError`` naming the path of a leaf that is not a float/complex array."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if big := _big_endian(leaf):
            raise TypeError(f"{who}: {what} leaf {path_str(path)} is {describe(leaf)}{big}")
        if not is_optimizable(getattr(leaf, "dtype", None)):
            raise TypeError(
                f"{who}: {what} leaf {path_str(path)} is {describe(leaf)}; "
                f"RMSprop steps only {SUPPORTED_DTYPES} arrays "
                "(integer and boolean parameters cannot be optimized, as in torch; "
                "nor can float8 or float4 ones)"
            )


def check_eager(leaves: Sequence, paths: Sequence, what: str, who: str) -> None:
    """``TypeError`` when a leaf is traced: a stateful optimizer cannot run under ``jax.jit``."""
    if not any(map(isinstance, leaves, repeat(jax.core.Tracer))):
        return
    i = next(i for i, leaf in enumerate(leaves) if isinstance(leaf, jax.core.Tracer))
    raise TypeError(
        f"{who}: {what} {path_str(paths[i])} is a traced array (inside jax.jit, jax.grad, "
        f"jax.vmap, ...). {who} is stateful and steps eagerly, replacing the arrays it holds, "
        "which a traced function cannot do: call it outside the transformation, or use the "
        "pure jrmsprop.rmsprop inside it (updates, state = tx.update(grads, state, params))"
    )


def check_pair(path, leaf, ref, what: str, ref_what: str, who: str = "rmsprop") -> None:
    """``leaf`` (``None`` allowed) has ``ref``'s shape and dtype; errors name the path and both."""
    if leaf is None:
        return
    if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
        raise TypeError(
            f"{who}: {what} leaf {path_str(path)} is a {type(leaf).__name__}, "
            f"not an array ({ref_what} there is {describe(ref)})"
        )
    if tuple(leaf.shape) != tuple(ref.shape):
        raise ValueError(
            f"{who}: shape mismatch at {path_str(path)}: {what} has shape "
            f"{tuple(leaf.shape)}, {ref_what} has shape {tuple(ref.shape)}"
        )
    if jnp.dtype(leaf.dtype) != jnp.dtype(ref.dtype):
        if big := _big_endian(leaf):
            raise TypeError(f"{who}: {what} leaf {path_str(path)} is {describe(leaf)}{big}")
        raise TypeError(
            f"{who}: dtype mismatch at {path_str(path)}: {what} is "
            f"{jnp.dtype(leaf.dtype).name}, {ref_what} is {jnp.dtype(ref.dtype).name}"
        )


def check_grad(path, grad, ref, what: str, ref_what: str, who: str = "rmsprop") -> None:
    """:func:`check_pair` for a gradient, which may also be narrower than ``ref``.

    A gradient of a dtype in ``UPCASTS[ref.dtype]`` (bfloat16 or float16 for
    float32, up to float32 for float64, complex64 for complex128) is accepted:
    the caller upcasts it, losslessly; so is a numpy gradient in non-native
    byte order (``>f4`` from a big-endian file), which :func:`upcast` turns
    native, losslessly. A wider gradient, or one of the other kind (real for
    complex, complex for real), raises ``TypeError`` saying which cast is
    wanted.
    """
    if (
        (leaf_dtype := getattr(grad, "dtype", None)) is None
        or not hasattr(grad, "shape")
        or not hasattr(ref, "dtype")
    ):
        return check_pair(path, grad, ref, what, ref_what, who)
    g, r = jnp.dtype(native(leaf_dtype)), jnp.dtype(ref.dtype)
    if g == r or g in UPCASTS.get(r, ()):
        spec = ArraySpec(tuple(ref.shape), leaf_dtype)
        return check_pair(path, grad, spec, what, ref_what, who)
    where = f"{who}: dtype mismatch at {path_str(path)}: {what} is {g.name}, {ref_what} is {r.name}"
    g_complex = jnp.issubdtype(g, jnp.complexfloating)
    r_complex = jnp.issubdtype(r, jnp.complexfloating)
    if g_complex != r_complex:
        kind = "complex" if r_complex else "real"
        raise TypeError(
            f"{where}: a {'real' if r_complex else 'complex'} gradient for a {kind} "
            f"parameter; give a {r.name} gradient (for a {kind} parameter the gradient "
            f"is {kind}, e.g. from jax.grad of a real loss)"
        )
    if is_optimizable(g) and g.itemsize > r.itemsize:
        raise TypeError(
            f"{where}: the gradient is wider than the parameter (narrower gradients are "
            f"upcast losslessly, wider ones would be rounded). Cast the gradients to "
            f"{r.name} yourself if that rounding is meant: "
            f"jax.tree.map(lambda g: g.astype(jnp.{r.name}), grads)"
        )
    raise TypeError(
        f"{where}; accepted gradient dtypes for a {r.name} parameter: "
        + ", ".join(d.name for d in sorted({r, *UPCASTS.get(r, ())}, key=lambda d: d.itemsize))
    )


def upcast(grad: Any, dtype: Any) -> Any:
    """``grad`` as ``dtype`` (a lossless upcast after :func:`check_grad`); ``None`` stays.

    A numpy gradient in non-native byte order is turned native first (the
    same numbers: JAX computes in native order only).
    """
    if grad is None or jnp.dtype(grad.dtype) == jnp.dtype(dtype):
        return grad
    if isinstance(grad, np.ndarray) and not grad.dtype.isnative:
        grad = grad.astype(native(grad.dtype))
    return jnp.asarray(grad).astype(dtype)


# What torch.optim.RMSprop keeps per parameter, and the hyperparameters of its group.
RMSPROP_STATE_KEYS = ("step", "square_avg", "momentum_buffer", "grad_avg")
RMSPROP_GROUP_KEYS = ("lr", "alpha", "eps", "weight_decay", "momentum")


def host_array(value: Any) -> np.ndarray:
    """A numpy copy of a number, numpy or JAX array, or torch tensor.

    Tensors are detached and their conjugate and negative bits resolved
    (torch is imported only when given a tensor: it is not a dependency).
    """
    if type(value).__module__.startswith("torch"):
        import torch

        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().resolve_conj().resolve_neg()
            if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: move the bits
                return tensor.view(torch.int16).numpy().view(jnp.bfloat16).copy()
            return tensor.numpy().copy()
    return np.array(value)


def state_dict_parts(state_dict: Any, where: str) -> tuple[Mapping, Mapping]:
    """The ``state`` and the one param group of a ``torch.optim`` RMSprop state dict.

    Raises ``ValueError`` naming what is missing (not a bare ``KeyError``), a
    number of groups other than one, and a dict from another optimizer: a
    group without RMSprop's hyperparameters or state keys RMSprop does not
    keep (Adam's ``exp_avg``, SGD's ``dampening``), with the keys found.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"{where}: a state dict is a dict, got {type(state_dict).__name__}")
    missing = [key for key in ("state", "param_groups") if key not in state_dict]
    if missing:
        raise ValueError(
            f"{where}: the state dict has no {_names(missing)} (its keys: {_names(state_dict)}); "
            "expected torch.optim's layout {'state': {...}, 'param_groups': [{...}]}"
        )
    state, groups = state_dict["state"], state_dict["param_groups"]
    if not isinstance(state, Mapping):
        raise TypeError(f"{where}: state_dict['state'] must be a dict, got {type(state).__name__}")
    if not isinstance(groups, Sequence) or isinstance(groups, str):
        raise TypeError(
            f"{where}: state_dict['param_groups'] must be a list, got {type(groups).__name__}"
        )
    if len(groups) != 1:
        raise ValueError(
            "loaded state dict has a different number of parameter groups: "
            f"{len(groups)}, expected 1"
        )
    group = groups[0]
    if not isinstance(group, Mapping):
        raise TypeError(f"{where}: the param group must be a dict, got {type(group).__name__}")
    foreign = sorted(
        {str(k) for entry in state.values() if isinstance(entry, Mapping) for k in entry}
        - set(RMSPROP_STATE_KEYS)
    )
    absent = [key for key in (*RMSPROP_GROUP_KEYS, "params") if key not in group]
    if foreign or absent:
        found = f"the group's keys: {_names(group)}"
        if foreign:
            found += f"; state keys RMSprop does not keep: {_names(foreign)}"
        if absent:
            found = f"the group has no {_names(absent)}; " + found
        raise ValueError(
            f"{where}: not an RMSprop state dict ({found}). RMSprop's group holds "
            f"{_names(RMSPROP_GROUP_KEYS)} and its state {_names(RMSPROP_STATE_KEYS)}; "
            "a state dict of another optimizer (Adam, SGD, ...) cannot be loaded"
        )
    return state, group


def check_state_entry(index: Any, entry: Any, momentum: float, centered: bool, where: str) -> None:
    """``ValueError`` unless ``entry`` has every key RMSprop needs for these settings.

    ``step`` and ``square_avg`` always; ``momentum_buffer`` when
    ``momentum > 0``; ``grad_avg`` when ``centered``. No value may be ``None``.
    """
    if not isinstance(entry, Mapping):
        raise TypeError(
            f"{where}: the state of parameter {index!r} must be a dict, got {type(entry).__name__}"
        )
    needed = ["step", "square_avg"]
    if momentum > 0:
        needed.append("momentum_buffer")
    if centered:
        needed.append("grad_avg")
    missing = [key for key in needed if key not in entry]
    if missing:
        raise ValueError(
            f"{where}: the state of parameter {index!r} has no {_names(missing)}, which "
            f"momentum={momentum} and centered={centered} need (it has {_names(entry)})"
        )
    nones = [key for key, value in entry.items() if value is None]
    if nones:
        raise ValueError(f"{where}: the state of parameter {index!r} has None for {_names(nones)}")


# The largest step count kept: int32's, as rmsprop's ``step`` vector and optax's ``count``
# hold it. Counters saturate there (optax.safe_increment's rule) instead of wrapping.
STEP_MAX = 2**31 - 1


def step_value(count: int) -> np.ndarray:
    """A step count as ``state_dict`` writes it: a float32 0-d array, as torch keeps
    ``state["step"]``, while float32 holds the count exactly (up to 2**24); float64 past
    that, so the state dict and ``state`` report the same count."""
    return np.asarray(count, np.float32 if count <= 2**24 else np.float64)


def step_count(value: Any, where: str) -> int:
    """torch's ``state["step"]`` (a number or 0-d array/tensor) as an ``int``.

    Raises ``ValueError`` unless it is a finite, non-negative integer value.
    """
    array = host_array(value)
    number = None
    if (
        array.size == 1
        and array.ndim <= 1
        and (array.dtype.kind in "iu" or is_optimizable(array.dtype))
        and not np.iscomplexobj(array)
    ):
        number = float(array.reshape(()))
    if number is None or not math.isfinite(number) or number < 0 or number != int(number):
        raise ValueError(f"{where}: step must be a finite non-negative integer, got {value!r}")
    if number > STEP_MAX:
        raise ValueError(
            f"{where}: step {number:.17g} is more than 2**31 - 1 = {STEP_MAX}, the largest count "
            "jrmsprop keeps (an int32, as optax's count; counters saturate there)"
        )
    return int(number)


def _names(keys: Any) -> str:
    return ", ".join(repr(k) for k in keys) or "nothing"


class ArraySpec(NamedTuple):
    """A shape and dtype to check an array against (see :func:`check_pair`)."""

    shape: tuple
    dtype: Any


def hyper_value(name: str, value: Any, who: str) -> float:
    """A hyperparameter read at run time (``defaults[name]``) as a float.

    Raises torch's ``ValueError`` when it is negative or NaN, ``TypeError``
    when it is not a real number.
    """
    if isinstance(value, (str, bytes)):
        # float("0.01") would read it; torch refuses a string hyperparameter.
        raise TypeError(
            f"{who}: defaults[{name!r}] must be a real number, got the string {value!r}; "
            f"write opt.defaults[{name!r}] = {value!s} without the quotes"
        )
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"{who}: defaults[{name!r}] must be a real number, got {type(value).__name__}"
        ) from None
    if not 0.0 <= number:  # also rejects NaN
        raise ValueError(HYPERPARAM_ERRORS[name].format(number))
    return number


def hyper_values(defaults: Any, names: Sequence[str], who: str) -> list[float]:
    """``defaults[name]`` for each of ``names``, in that order, each checked by
    :func:`hyper_value`; a missing one is a ``ValueError`` naming it."""
    missing = [name for name in names if name not in defaults]
    if missing:
        raise ValueError(
            f"{who}: defaults has no {_names(missing)} (its keys: {_names(defaults)}); a step "
            f"reads {_names(names)} from it: put the missing ones back, e.g. "
            f"opt.defaults[{missing[0]!r}] = ..."
        )
    return [hyper_value(name, defaults[name], who) for name in names]


def group_params(param_group: Any, who: str) -> Any:
    """``param_group["params"]``, or a ``ValueError`` saying it is missing."""
    if not isinstance(param_group, Mapping) or "params" not in param_group:
        keys = _names(param_group) if isinstance(param_group, Mapping) else "not a dict"
        raise ValueError(
            f"{who}: param_group has no 'params' (its keys: {keys}); the step reads the "
            "parameters from param_group['params'] and writes the new ones there"
        )
    others = [key for key in param_group if key != "params"]
    if others:
        # torch.optim's habit, opt.param_groups[0]["lr"] = x, does nothing in torch's
        # _FunctionalRMSprop either: it reads defaults. Refused, so it is never silently ignored.
        raise ValueError(
            f"{who}: param_group holds {_names(others)} besides 'params'; the step reads "
            f"hyperparameters from opt.defaults, as torch's _FunctionalRMSprop does: write "
            f"opt.defaults[{others[0]!r}] = ... and remove the key from param_group"
        )
    return param_group["params"]


def check_distinct(leaves: Sequence, paths: Sequence, who: str) -> None:
    """``ValueError`` when one array sits at two positions: it cannot be donated twice."""
    first: dict[int, int] = {}
    for i, leaf in enumerate(leaves):
        j = first.setdefault(id(leaf), i)
        if j != i:
            raise ValueError(
                f"{who}: params {path_str(paths[j])} and {path_str(paths[i])} are the same "
                "array; each parameter needs its own array (the step donates them)"
            )


_is_deleted = operator.methodcaller("is_deleted")
# The bulk checks read the JAX array's own slots (aval, _committed, _sharding):
# ``x.shape`` and ``x.dtype`` are Python properties over ``x.aval``, three
# times slower over 1,000 leaves. A JAX without them takes the per-leaf path.
_aval_shape = operator.attrgetter("aval.shape")
_aval_dtype = operator.attrgetter("aval.dtype")
_committed = operator.attrgetter("_committed")
_one_device = operator.attrgetter("_sharding._device")  # a SingleDeviceSharding's


def _on_its_devices(g: Any, p: Any) -> bool:
    """Whether gradient ``g`` may meet parameter ``p`` in one compiled call.

    A JAX array that is not committed (created without a device or sharding)
    follows the committed arguments, and so does a numpy array. A committed one
    must be on the parameter's devices: its sharding may differ there (JAX
    reshards it, the parameter keeps its own), its devices may not (the call
    would fail, or move the parameter to the gradient's devices).
    """
    if not isinstance(g, jax.Array) or not g.committed:
        return True
    gs, ps = g.sharding, p.sharding
    return gs is ps or gs.device_set == ps.device_set


def _one_device_in_process() -> bool:
    """Whether this process has one device in all (every backend, every host together).

    Then no array can be anywhere else, and the device check has nothing to
    check. A machine with a GPU also has the CPU backend: two devices, checked.
    """
    try:
        from jax._src import xla_bridge  # the initialized backends; no public API lists them

        return sum(len(client.devices()) for client in xla_bridge.backends().values()) == 1
    except Exception:  # noqa: BLE001 (another JAX: check)
        return False


def _all_on_their_devices(given: Sequence, wanted: Sequence) -> bool:
    """:func:`_on_its_devices` for each pair, in bulk when everything is on one device."""
    if _one_device_in_process():
        return True
    with contextlib.suppress(AttributeError):
        committed = list(compress(given, map(_committed, given)))
        if not committed or len(set(map(_one_device, chain(committed, wanted)))) == 1:
            return True
    return all(map(_on_its_devices, given, wanted))


def _all_fine(
    given: Sequence,
    wanted: Sequence,
    params: Sequence,
    states: Sequence,
    expected: tuple[list, list] | None,
) -> bool:
    """Whether ``given`` are JAX arrays that pass every check of :func:`check_gradients`.

    C-level loops only (``map`` over attribute getters), the common case of a
    step; ``False`` sends the caller to the per-leaf checks, which name what
    is wrong. ``expected`` is the shapes and dtypes wanted, or ``None`` when
    they and deleted arrays are left to the compiled call (``dispatch``).
    """
    types = set(map(type, given))
    if not all(issubclass(t, jax.Array) and not issubclass(t, jax.core.Tracer) for t in types):
        return False
    if expected is not None:  # tracers are out above: is_deleted() is safe here
        shapes, dtypes = expected
        if list(map(_aval_shape, given)) != shapes or list(map(_aval_dtype, given)) != dtypes:
            return False
        if any(map(_is_deleted, given)):
            return False
    return _not_aliased(given, params, states) and _all_on_their_devices(given, wanted)


def _state_buffers(states: Sequence) -> Iterator:
    """Every buffer of units' stored states (an array alone, a triple, or ``None``; see
    ``units.pack``), and the triples and ``None`` themselves: no gradient is either."""
    triples = compress(states, map(operator.is_, map(type, states), repeat(tuple)))
    return chain(states, chain.from_iterable(triples))


def _not_aliased(given: Sequence, params: Sequence, states: Sequence) -> bool:
    """Whether no array of ``given`` is one of ``params`` or a buffer of ``states``."""
    ids = set(map(id, given))  # looked up, not inserted, for params and state (faster)
    if not ids.isdisjoint(map(id, params)):
        return False
    return ids.isdisjoint(map(id, _state_buffers(states)))


def _devices(array: Any) -> str:
    devices = sorted(array.sharding.device_set, key=operator.attrgetter("id"))
    return repr(devices[0]) if len(devices) == 1 else f"{len(devices)} devices {devices}"


def check_gradients(
    grads: Sequence,
    stepping: Sequence[int],
    params: Sequence,
    paths: Sequence,
    states: Sequence,
    who: str,
    shapes: Sequence[tuple],
    dtypes: Sequence[Any],
    *,
    dispatch: bool = False,
) -> bool:
    """Checks the gradients of a step that donates ``params`` and the ``states`` buffers.

    Each ``grads[i]`` for ``i`` in ``stepping`` must be an array (JAX or
    numpy) of ``params[i]``'s shape and dtype (or a narrower dtype that
    upcasts losslessly, see :func:`check_grad`), not traced, not deleted,
    neither a parameter nor a state buffer (a donated array cannot also be
    read), and, if it is a JAX array committed to devices, on ``params[i]``'s
    devices (see :func:`_on_its_devices`).

    Args:
      grads: per position, a gradient or ``None``.
      stepping: the positions whose gradient is not ``None``.
      params: per position, the parameter array (a JAX array).
      paths: per position, its key path (for the messages).
      states: per unit, the state the step donates, as ``units.pack`` stores
        it: an array, a tuple of buffers (``None`` entries allowed), or ``None``.
      who: the caller's name, first in every message.
      shapes: per position, ``params[i].shape`` (as tuples; the caller has
        them, which saves reading them on every step).
      dtypes: per position, ``params[i].dtype``.
      dispatch: whether one compiled call (``units.step_units``) follows,
        which checks shapes and dtypes itself (and upcasts) and whose
        dispatch refuses deleted arrays, before anything runs. JAX arrays are
        then checked only for what the call would not refuse (tracers,
        aliasing, devices); anything else takes the per-leaf checks.

    Returns:
      Whether some gradient's dtype differs from its parameter's (narrower,
      or another byte order): the caller upcasts those.
    """
    everyone = len(stepping) == len(grads)
    pick = (lambda xs: list(xs)) if everyone else (lambda xs: [xs[i] for i in stepping])
    given, wanted = (grads, params) if everyone else (pick(grads), pick(params))
    with contextlib.suppress(AttributeError):  # a JAX without the slots: the per-leaf checks
        expected = None if dispatch else (pick(shapes), pick(dtypes))
        if _all_fine(given, wanted, params, states, expected):
            return False
    param_ids = dict(zip(map(id, params), range(len(params))))
    state_ids = set(map(id, _state_buffers(states)))
    check_eager(grads, paths, "gradient", who)
    for i in stepping:  # one by one, for the message
        g, p, where = grads[i], params[i], path_str(paths[i])
        if not isinstance(g, (jax.Array, np.ndarray)):
            raise TypeError(f"{who}: gradient {where} is a {type(g).__name__}, not an array")
        check_grad(paths[i], g, p, "gradients", "params", who)
        j = param_ids.get(id(g))
        if j is not None or id(g) in state_ids:
            what = (
                "a buffer of the optimizer state"
                if j is None
                else f"parameter {path_str(paths[j])}"
            )
            raise ValueError(
                f"{who}: the gradient at {where} is {what}, which the step donates: pass a copy"
            )
        if isinstance(g, jax.Array) and g.is_deleted():
            raise ValueError(
                f"{who}: the gradient at {where} is a deleted array (donated to or deleted by "
                "other code)"
            )
        if not _on_its_devices(g, p):
            raise ValueError(
                f"{who}: the gradient at {where} is committed to {_devices(g)}, its parameter "
                f"is on {_devices(p)}; a step keeps each parameter where it is: move the "
                "gradient there first, e.g. jax.device_put(g, p.sharding)"
            )
    return any(grads[i].dtype != params[i].dtype for i in stepping)


def loaded_buffer(value: Any, shape: tuple, dtype: Any, where: str) -> np.ndarray:
    """A state buffer from a state dict as a host array of ``shape`` and ``dtype``, checked.

    Raises ``TypeError`` unless it is a float or complex array of the
    parameter's kind (float / complex), ``ValueError`` unless its shape is
    ``shape``. A numpy array in non-native byte order (a big-endian file) is
    accepted: the cast to ``dtype`` makes it native, losslessly.
    """
    if isinstance(value, (bool, int, float, complex)):
        raise TypeError(
            f"{where} is a Python {type(value).__name__}, not an array: a state buffer "
            f"is an array of the parameter's shape {tuple(shape)} and dtype "
            f"{jnp.dtype(dtype).name}"
        )
    try:
        array = host_array(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{where} is not an array: {err}") from None
    if not is_optimizable(native(array.dtype)):  # bfloat16 (numpy kind "V") included
        raise TypeError(f"{where} is {array.dtype}, not a float or complex array")
    if tuple(array.shape) != tuple(shape):
        raise ValueError(
            f"{where} has shape {tuple(array.shape)}, the parameter has shape {tuple(shape)}"
        )
    if np.iscomplexobj(array) != jnp.issubdtype(dtype, jnp.complexfloating):
        raise TypeError(f"{where} is {array.dtype}, the parameter is {jnp.dtype(dtype).name}")
    return array.astype(dtype)
