"""Checkpoints of a training state (orbax): where the one training loop
saves, resumes from, and where a finished run's parameters are read back.

A checkpoint's step is the global train step; the state's "position"
(epoch, step) says where in the epoch it was taken, step ==
steps_per_epoch once the epoch has been evaluated.
"""

import logging
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp

__all__ = ["manager", "restore", "resume", "save", "save_final"]


class _DropOrbaxInfo(logging.Filter):
  """Orbax logs every checkpoint step at INFO; keep its warnings only."""

  def filter(self, record):
    return record.levelno >= logging.WARNING or "/orbax/" not in (
        record.pathname or "")


_QUIET = _DropOrbaxInfo()


def _quiet_orbax() -> None:
  """Silence orbax's per-step INFO lines from here on."""
  logging.getLogger("absl").addFilter(_QUIET)  # a set: adding twice is once


def manager(directory: str | Path, max_to_keep: int | None = 2
            ) -> ocp.CheckpointManager:
  """The checkpoint manager of `directory`, created if need be."""
  _quiet_orbax()
  return ocp.CheckpointManager(
      Path(directory).absolute(),
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                           create=True))


def resume(checkpoints: ocp.CheckpointManager, state: dict,
           steps_per_epoch: int, log) -> tuple[dict, int, int]:
  """`state`, restored from the latest checkpoint if there is one, and the
  (epoch, step) to go on from: (1, 0) for a fresh start."""
  if checkpoints.latest_step() is None:
    return state, 1, 0
  state = checkpoints.restore(checkpoints.latest_step(),
                              args=ocp.args.StandardRestore(state))
  epoch, step = (int(v) for v in state["position"])
  log(f"resuming at epoch {epoch}, step {step}/{steps_per_epoch}")
  if step == steps_per_epoch:
    epoch, step = epoch + 1, 0
  return state, epoch, step


def save(checkpoints: ocp.CheckpointManager, state: dict, epoch: int,
         step: int, steps_per_epoch: int) -> None:
  """Save `state` as taken at (epoch, step), asynchronously."""
  state["position"] = np.array([epoch, step], np.int64)
  checkpoints.save((epoch - 1) * steps_per_epoch + step,
                   args=ocp.args.StandardSave(state))


def save_final(directory: str | Path, step: int, state: dict) -> None:
  """Save `state` at `step` in `directory` and wait for it: a finished
  run's parameters, for `restore`."""
  with manager(directory, max_to_keep=None) as checkpoints:
    checkpoints.save(step, args=ocp.args.StandardSave(state))


def restore(directory: str | Path, target: dict) -> dict:
  """The parts of the latest checkpoint in `directory` that `target` (a
  pytree of arrays or abstract arrays) names; the rest is left unread."""
  directory = Path(directory)
  _quiet_orbax()
  with ocp.CheckpointManager(directory.absolute()) as checkpoints:
    step = checkpoints.latest_step()
    if step is None:
      raise FileNotFoundError(f"{directory} holds no checkpoint")
    return checkpoints.restore(step, args=ocp.args.PyTreeRestore(
        target, partial_restore=True,
        restore_args=ocp.checkpoint_utils.construct_restore_args(target)))
