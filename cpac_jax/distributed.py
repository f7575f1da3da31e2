"""Several processes, one run: joining them, and which one writes files."""

import jax
import ml_collections

__all__ = ["initialize", "writes_files"]


def initialize(config: ml_collections.ConfigDict) -> None:
  """Join the multi-process job `config.distributed` asks for, once, before
  any computation: `jax.distributed.initialize` with the fields that are
  set. Every process then runs the same program on its share of each batch,
  and only process 0 writes files other than checkpoints."""
  settings = config.get("distributed") or {}
  if not settings.get("initialize") or jax.distributed.is_initialized():
    return
  address = settings.get("coordinator_address")
  count, index = settings.get("num_processes"), settings.get("process_id")
  if address is not None and not address.rpartition(":")[2].isdigit():
    raise ValueError(f"distributed.coordinator_address {address!r} is not "
                     "host:port")
  if count is not None and (count < 1 or index is None
                            or not 0 <= index < count):
    raise ValueError(
        f"distributed.process_id {index!r} must be in 0..{count - 1} for "
        f"distributed.num_processes {count}")
  jax.distributed.initialize(address, count, index)


def writes_files() -> bool:
  """Whether this process writes configs, metrics and results."""
  return jax.process_index() == 0
