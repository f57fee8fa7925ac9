"""Moving an RMSprop run between ``torch.optim.RMSprop`` and jrmsprop.

The bridge has five parts:

- :mod:`jrmsprop.interop.run`: a whole run by parameter name (``from_torch``,
  ``from_torch_state_dicts``, ``to_torch``): params, param groups, optimizer
  state and lr schedulers, all or nothing both ways;
- :mod:`jrmsprop.interop.state_dict`: torch's optimizer state dict by position
  (``from_torch_state_dict``, ``to_torch_state_dict``, ``state_dict_tensors``);
- :mod:`jrmsprop.interop.schedules`: ``torch.optim.lr_scheduler`` schedulers as
  optax schedules defined for every step count;
- :mod:`jrmsprop.interop.plateau`: a ``ReduceLROnPlateau`` kept in torch, its lrs
  carried in the JAX state (``plateau.follow``);
- ``jrmsprop.interop._torch``: torch imported lazily, tensors to and from arrays.

Every function takes and returns objects or dicts, never paths: nothing is
unpickled here. Load a file saved by ``torch.save`` with
``torch.load(path, weights_only=True)``. torch is imported only when a torch
tensor has to be read or made.
"""

from jrmsprop.interop.run import from_torch, from_torch_state_dicts, to_torch
from jrmsprop.interop.state_dict import (
    _DEFAULTS,
    from_torch_state_dict,
    state_dict_tensors,
    to_torch_state_dict,
)

__all__ = [
    "from_torch",
    "from_torch_state_dict",
    "from_torch_state_dicts",
    "state_dict_tensors",
    "to_torch",
    "to_torch_state_dict",
]
