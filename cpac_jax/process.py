"""Process tuning for cpac_jax's compiled steps on the CPU: the XLA options
they compile with and how the process's C library keeps freed memory.

Nothing here changes what a step computes, only how fast it runs; the
command lines (`cpac_jax.main`, `cpac_jax.sweep`) and the benchmarks that
time steps call `reuse_host_memory` first and compile with
`compiler_options`.
"""

import ctypes
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import jax

__all__ = ["compiler_options", "huge_pages", "huge_pages_env",
           "no_huge_pages_env", "restart_with_huge_pages",
           "reuse_host_memory"]


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
HUGE_PAGES = "glibc.malloc.hugetlb=1"
_RESTARTED = "CPAC_JAX_RESTARTED"  # set by the restart: never twice
_THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def huge_pages_env(env: Mapping[str, str]) -> dict[str, str] | None:
  """`env` with GLIBC_TUNABLES asking glibc's malloc to back what it maps
  with transparent huge pages (HUGE_PAGES); None where `huge_pages` says
  they can't be had or `env` already sets glibc.malloc.hugetlb (to any
  value: a user's 0 stays 0).

  A block over the 64 MiB heap of one of glibc's thread arenas is mapped
  afresh each time whatever `reuse_host_memory` set (glibc falls back to
  mmap there); XLA's CPU runtime allocates a step's temporaries as one
  block from its worker threads, so a step needing more (a VGG-16 step:
  108 MiB) faults every page of them in on every call, 4 KiB at a time.
  With huge pages, 2 MiB at a time. See
  experiments/benchmarks/huge_pages.md for what it changes."""
  tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t]
  if (not huge_pages()
      or any(t.startswith("glibc.malloc.hugetlb=") for t in tunables)):
    return None
  return {**env, "GLIBC_TUNABLES": ":".join([*tunables, HUGE_PAGES])}


def huge_pages() -> bool:
  """Whether glibc's malloc can be asked for transparent huge pages here:
  glibc 2.35 or later (its glibc.malloc.hugetlb tunable) on a system
  whose transparent huge pages are not "never"."""
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
  except (AttributeError, OSError, ValueError):
    return False
  if name != "glibc" or tuple(map(int, version.split(".")[:2])) < (2, 35):
    return False
  return not (_THP.exists() and "[never]" in _THP.read_text())


def no_huge_pages_env(env: Mapping[str, str]) -> dict[str, str]:
  """`env` without HUGE_PAGES in its GLIBC_TUNABLES (its other tunables
  kept): for a process that must run on glibc's defaults."""
  env = dict(env)
  tunables = [t for t in env.pop("GLIBC_TUNABLES", "").split(":")
              if t and t != HUGE_PAGES]
  if tunables:
    env["GLIBC_TUNABLES"] = ":".join(tunables)
  return env


def restart_with_huge_pages() -> None:
  """Run this process's command line again, in place, with
  `huge_pages_env` (glibc reads its tunables only at start); nothing where
  that is None, where this process is such a restart already, or where
  its command line can't be run again (a script read from stdin, an
  interactive session, a notebook's kernel). For a command line's entry,
  before its work starts: what the process did before is lost."""
  env = huge_pages_env(os.environ)
  if (env is None or _RESTARTED in os.environ
      or sys.argv[0] in ("", "-") or "ipykernel" in sys.modules):
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, {**env, _RESTARTED: "1"})


def _usable_cores() -> int:
  """The cores this process may run on (its affinity, where the system
  has one)."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1
