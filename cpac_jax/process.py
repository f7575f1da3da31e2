"""Process tuning for cpac_jax's compiled steps on the CPU: the XLA options
they compile with and how the process's C library keeps freed memory.

Nothing here changes what a step computes, only how fast it runs; the
command lines (`cpac_jax.main`, `cpac_jax.sweep`) and the benchmarks that
time steps call `reuse_host_memory` first and compile with
`compiler_options`.
"""

import ctypes
import os

import jax

__all__ = ["compiler_options", "reuse_host_memory"]


def compiler_options(ynn_fusions: bool = False) -> dict | None:
  """The XLA options (`jax.jit`'s compiler_options) of cpac_jax's compiled
  train and eval steps, on the CPU: YNNPACK's fusions off unless
  `ynn_fusions` (a run's `config.xla_cpu_ynn_fusions`), and, in a process
  that may run on one core only (as each shard of the sweep benchmark's
  sharded mode is pinned), Eigen's matmuls on the calling thread instead of
  handed to a thread pool with no other core to run on."""
  if jax.default_backend() != "cpu":
    return None
  options = {}
  if not ynn_fusions:
    options["xla_cpu_experimental_ynn_fusion_type"] = ""  # no fusion types
  if _usable_cores() == 1:
    options["xla_cpu_multi_thread_eigen"] = False
  return options or None


def reuse_host_memory() -> bool:
  """Has glibc's malloc, process-wide, serve blocks from its heaps and keep
  what is freed there (`mallopt`: no mmap, 1 GiB trim threshold), so each
  call of a compiled step reuses the pages of the call before.

  By default glibc maps each block over its mmap threshold (raised as
  blocks are freed, to 32 MiB at most) with mmap and unmaps it on free; a
  step whose temporaries need more, as XLA's CPU runtime allocates them in
  one block a call, then faults every page of them in on every call. See
  experiments/benchmarks/host_memory.md for what it costs and what it
  leaves: blocks that XLA's worker threads allocate from their own arenas
  (at most 64 MiB each, deleted when emptied) still fault; one arena for
  all threads (M_ARENA_MAX=1) stopped those too but slowed small steps by
  5-25% (a probe, not committed). Returns whether it applied: False where
  the C library is not glibc. cpac_jax's training command lines
  (`cpac_jax.main`, `cpac_jax.sweep`) and the benchmarks
  (`cpac_jax.benchmarks`) call it first; the process then keeps what it
  frees for reuse (up to 1 GiB above the heap's top) instead of returning
  it to the system.
  """
  try:
    libc = ctypes.CDLL("libc.so.6")
    return (libc.mallopt(_M_MMAP_MAX, 0) == 1
            and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1)
  except (OSError, AttributeError):  # not glibc
    return False


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's malloc.h


def _usable_cores() -> int:
  """The cores this process may run on (its affinity, where the system
  has one)."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1
