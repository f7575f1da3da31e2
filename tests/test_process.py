"""Process tuning (`cpac_jax.process`): the XLA options of the compiled
steps and how freed host memory is kept."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from cpac_jax import process, train
from cpac_jax.config import run_key
from tests.conftest import load_config


@pytest.mark.slow
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU option")
def test_training_compiles_without_ynnpack_fusions_unless_asked():
  import jax.numpy as jnp
  import optax
  from flax import nnx

  from cpac_jax.models.cpac_cnn import CPACNet

  net = CPACNet(rank=3, rngs=nnx.Rngs(0))
  net.train()
  graphdef, params, rest = nnx.split(net, nnx.Param, ...)
  tx = optax.adam(1e-3)
  args = (params, rest, tx.init(params), jnp.zeros((1, 28, 28, 1)),
          jnp.zeros((1,), jnp.int32))
  hlo = {ynn: jax.jit(train.make_step(graphdef, tx),
                      compiler_options=process.compiler_options(ynn))
         .lower(*args).compile().as_text() for ynn in (False, True)}
  # jaxlib makes YNNPACK fusions of this step by default; if a jaxlib stops
  # making them, config.xla_cpu_ynn_fusions has no purpose left.
  assert "__ynn_fusion" in hlo[True]
  assert "__ynn_fusion" not in hlo[False]
  config = load_config("cpac_mnist")
  keyed = config.copy_and_resolve_references()
  keyed.xla_cpu_ynn_fusions = True
  assert run_key(keyed) == run_key(config)  # how it compiles, not what


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU option")
def test_a_process_on_one_core_runs_eigen_on_the_calling_thread(monkeypatch):
  import jax.numpy as jnp

  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1},
                      raising=False)
  assert "xla_cpu_multi_thread_eigen" not in process.compiler_options()
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
  options = process.compiler_options()
  assert options["xla_cpu_multi_thread_eigen"] is False
  assert options["xla_cpu_experimental_ynn_fusion_type"] == ""
  # This jaxlib takes the option, and the matmul still computes the same.
  a = jnp.arange(12.0).reshape(3, 4)
  b = jnp.arange(8.0).reshape(4, 2)
  out = jax.jit(jnp.matmul, compiler_options=options)(a, b)
  np.testing.assert_allclose(out, np.asarray(a) @ np.asarray(b))


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_reuse_host_memory_stops_big_blocks_being_mapped_afresh_each_call():
  # A 64 MiB block, allocated and freed five times: with glibc's defaults
  # each one is mapped and its pages faulted in again; after
  # reuse_host_memory, only the first. In a fresh process: mallopt cannot
  # be taken back.
  script = """
import ctypes, resource, sys
from cpac_jax import process
if sys.argv[1] == "reuse":
  assert process.reuse_host_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def block():  # as XLA's runtime allocates a call's temporaries
  pointer = libc.malloc(1 << 26)
  ctypes.memset(pointer, 1, 1 << 26)
  libc.free(pointer)
block()  # the first block, either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
  block()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
  faults = {mode: int(subprocess.run(
      [sys.executable, "-c", script, mode], capture_output=True, text=True,
      check=True, env=process.no_huge_pages_env(os.environ)).stdout)
      for mode in ("default", "reuse")}
  pages = 5 * (1 << 26) // os.sysconf("SC_PAGE_SIZE")
  assert faults["default"] > pages // 2, faults
  assert faults["reuse"] < pages // 20, faults


def test_huge_pages_env_asks_once_and_keeps_other_tunables():
  if not process.huge_pages():
    pytest.skip("no glibc 2.35 or later, or transparent huge pages off")
  other = "glibc.malloc.arena_max=2"
  assert process.huge_pages_env({"GLIBC_TUNABLES": other, "A": "1"}) == {
      "GLIBC_TUNABLES": f"{other}:{process.HUGE_PAGES}", "A": "1"}
  assert process.huge_pages_env(
      {"GLIBC_TUNABLES": f"{process.HUGE_PAGES}:{other}"}) is None
  # A user's own choice, huge pages off, is kept.
  assert process.huge_pages_env(
      {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None


@pytest.mark.slow
def test_restart_with_huge_pages_stops_a_thread_arenas_big_block_faulting():
  # A 96 MiB block, over a thread arena's 64 MiB heap, allocated and freed
  # by a thread five times: glibc maps it afresh each time even after
  # reuse_host_memory, 4 KiB pages faulted in; after the restart, 2 MiB.
  if not process.huge_pages():
    pytest.skip("no glibc 2.35 or later, or transparent huge pages off")
  script = """
import ctypes, os, resource, sys, threading
from cpac_jax import process
print("start", flush=True)
if sys.argv[1] == "huge":
  process.restart_with_huge_pages()
assert process.reuse_host_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def block():
  pointer = libc.malloc(96 << 20)
  ctypes.memset(pointer, 1, 96 << 20)
  libc.free(pointer)
def blocks():
  block()
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(5):
    block()
  print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
worker = threading.Thread(target=blocks)
worker.start()
worker.join()
"""
  out = {mode: subprocess.run(
      [sys.executable, "-c", script, mode], capture_output=True, text=True,
      check=True, env=process.no_huge_pages_env(os.environ)).stdout.split()
      for mode in ("reuse", "huge")}
  assert out["reuse"][0] == "start" and out["huge"][:2] == ["start"] * 2
  faults = {mode: int(lines[-1]) for mode, lines in out.items()}
  pages = 5 * (96 << 20) // os.sysconf("SC_PAGE_SIZE")
  assert faults["reuse"] > pages // 2, faults
  assert faults["huge"] < faults["reuse"] // 4, faults
