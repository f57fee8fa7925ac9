"""``torch.optim.lr_scheduler`` schedulers as optax schedules.

The translation lives in :mod:`jrmsprop.interop.schedules`; this module keeps
its public names importable as ``jrmsprop.schedules``.
"""

from jrmsprop.interop.schedules import (
    TRANSLATABLE,
    check_translatable,
    detached_copy,
    from_torch_scheduler,
    schedules_of,
    step_quietly,
    write_state,
)

__all__ = [
    "TRANSLATABLE",
    "check_translatable",
    "detached_copy",
    "from_torch_scheduler",
    "schedules_of",
    "step_quietly",
    "write_state",
]
