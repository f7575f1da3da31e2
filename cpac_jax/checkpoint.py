"""Checkpoints of a training state (orbax): where the one training loop
saves, resumes from, and where a finished run's parameters are read back.

A checkpoint's step is the global train step; the state's "position"
(epoch, step) says where in the epoch it was taken, step ==
steps_per_epoch once the epoch has been evaluated.
"""

import errno
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from cpac_jax import distributed

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


class _DropStrayReads(logging.Filter):
  """A restore that fails leaves tensorstore reads of its other arrays
  pending; asyncio logs each one's error ("exception was never retrieved",
  a traceback apiece: about 1,400 lines for a small net) once they are
  collected. The one failure that matters is reported by `resume`."""

  def filter(self, record):
    return "exception was never retrieved" not in record.getMessage()


_STRAY = _DropStrayReads()


def _quiet_failed_restores() -> None:
  """From here on, drop the stray errors of a restore that failed: the
  logged ones (`_DropStrayReads`), and the callbacks of its pending reads,
  which raise 'Event loop is closed' where nothing can catch it once the
  restore's event loop has closed."""
  logging.getLogger("asyncio").addFilter(_STRAY)  # a set: once
  if getattr(sys.unraisablehook, "drops_closed_loop", False):
    return
  previous = sys.unraisablehook

  def hook(unraisable):
    if not (unraisable.exc_type is RuntimeError
            and str(unraisable.exc_value) == "Event loop is closed"):
      previous(unraisable)

  hook.drops_closed_loop = True
  sys.unraisablehook = hook


def _reason(error: Exception) -> str:
  """What failed, in a line: tensorstore's code and the file it read, or
  the error's first 200 characters."""
  text = " ".join(str(error).split())
  file = re.search(r'local file "([^"]+)"', text)
  code = re.match(r"([A-Z_]+): ", text)
  if file:
    return f"{code.group(1) + ' ' if code else ''}reading {file.group(1)}"
  return text[:200]


def manager(directory: str | Path, max_to_keep: int | None = 2
            ) -> ocp.CheckpointManager:
  """The checkpoint manager of `directory`, created if need be."""
  _quiet_orbax()
  return ocp.CheckpointManager(
      Path(directory).absolute(),
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                           create=True))


_KEY = "run_key.txt"  # beside the steps: what the checkpoints belong to


def resume(checkpoints: ocp.CheckpointManager, state: dict,
           steps_per_epoch: int, log, key: str) -> tuple[dict, int, int]:
  """`state`, restored from the latest checkpoint that reads back if there
  is one, and the (epoch, step) to go on from: (1, 0) for a fresh start.
  `key` names what is trained (run keys); checkpoints of another key are
  refused, a damaged latest checkpoint is passed over for the one before.

  Raises:
    ValueError: the checkpoints are another key's, or none reads back.
  """
  directory = Path(checkpoints.directory)
  recorded = directory / _KEY
  found = recorded.read_text().strip() if recorded.exists() else ""
  if found and found != key:
    raise ValueError(
        f"{directory} holds checkpoints of another config (key {found}, "
        f"not {key}); use another workdir or delete them")
  if not found and distributed.writes_files():
    temp = directory / f".{_KEY}.tmp"
    temp.write_text(key + "\n")
    os.replace(temp, recorded)  # whole or not at all
  steps = sorted(checkpoints.all_steps(), reverse=True)
  if not steps:
    return state, 1, 0
  _quiet_failed_restores()
  for i, global_step in enumerate(steps):
    try:
      restored = checkpoints.restore(global_step,
                                     args=ocp.args.StandardRestore(state))
      break
    except Exception as error:  # noqa: BLE001 - any damage: try the older
      reason = _reason(error)
      if i + 1 == len(steps):
        raise ValueError(
            f"no checkpoint in {directory} reads back (the last tried, "
            f"step {global_step}: {reason}); delete {directory} to start "
            "the run afresh") from error
      log(f"checkpoint {global_step} in {directory} does not read back "
          f"({reason}); resuming from step {steps[i + 1]}, the unreadable "
          "one kept aside")
  for damaged in steps[:i]:  # kept aside; retraining saves these steps again
    (directory / str(damaged)).rename(
        directory / f"{damaged}.unreadable-{int(time.time())}")
  checkpoints.reload()
  state = restored
  epoch, step = (int(v) for v in state["position"])
  log(f"resuming at epoch {epoch}, step {step}/{steps_per_epoch}")
  if step == steps_per_epoch:
    epoch, step = epoch + 1, 0
  return state, epoch, step


def _check_space(directory: str | Path, state) -> None:
  """Refuse a save the disk can't hold before orbax starts it: its write
  threads, failing midway, would print tracebacks of their own and leave
  a torn step. A checkpoint takes the state's bytes plus metadata (about
  60 KB for a small net); a quarter more and 128 KiB leave room."""
  need = int(1.25 * sum(getattr(leaf, "nbytes", 0)
                        for leaf in jax.tree.leaves(state))) + (128 << 10)
  free = shutil.disk_usage(directory).free
  if free < need:
    raise OSError(errno.ENOSPC,
                  f"No space left on device: {directory} has {free:,} bytes "
                  f"free, a checkpoint needs about {need:,}")


def save(checkpoints: ocp.CheckpointManager, state: dict, epoch: int,
         step: int, steps_per_epoch: int) -> None:
  """Save `state` as taken at (epoch, step), asynchronously, once the
  disk has room for it (else OSError ENOSPC, the last checkpoint kept)."""
  state["position"] = np.array([epoch, step], np.int64)
  checkpoints.wait_until_finished()  # the space the previous save took
  _check_space(checkpoints.directory, state)
  checkpoints.save((epoch - 1) * steps_per_epoch + step,
                   args=ocp.args.StandardSave(state))


def save_final(directory: str | Path, step: int, state: dict) -> None:
  """Save `state` at `step` in `directory` and wait for it: a finished
  run's parameters, for `restore`."""
  with manager(directory, max_to_keep=None) as checkpoints:
    if step in checkpoints.all_steps():  # orbax won't overwrite a step
      checkpoints.delete(step)
    _check_space(checkpoints.directory, state)
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
