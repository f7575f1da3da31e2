"""The optimizer registry: the names `optimizer.name` may take, the
learning-rate schedules, and the optax transformation they make."""

import ml_collections
import optax

__all__ = ["DEFAULT_SCHEDULE", "OPTIMIZERS", "SCHEDULES", "make_optimizer"]

OPTIMIZERS = {"adam": optax.adam, "adamw": optax.adamw, "sgd": optax.sgd,
              "momentum": lambda learning_rate: optax.sgd(learning_rate, 0.9)}
# "constant", or "cosine": decay to 0 over the run.
SCHEDULES = ("constant", "cosine")
DEFAULT_SCHEDULE = "constant"  # optimizer.schedule unset


def make_optimizer(optimizer: ml_collections.ConfigDict, total_steps: int
                   ) -> optax.GradientTransformation:
  """The optax optimizer a config's `optimizer` block names (`name`,
  `learning_rate`, `schedule`), for a run of `total_steps` steps."""
  if optimizer.name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer.name {optimizer.name!r}; choose one "
                     f"of {tuple(OPTIMIZERS)}")
  schedule = optimizer.get("schedule") or DEFAULT_SCHEDULE  # None: unset
  if schedule not in SCHEDULES:
    raise ValueError(f"unknown optimizer.schedule {schedule!r}; choose one "
                     f"of {SCHEDULES}")
  learning_rate = optimizer.learning_rate
  if schedule == "cosine":
    learning_rate = optax.cosine_decay_schedule(learning_rate, total_steps)
  return OPTIMIZERS[optimizer.name](learning_rate=learning_rate)
