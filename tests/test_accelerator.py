"""The accelerator check (`cpac_jax.benchmarks.accelerator`) end to end in
its dry run, and the CPU-only choices (`conv_lowering`'s lowerings,
`compiler_options`' flags) taken on the CPU alone: the platform is faked
both ways, so these run alike on any backend.

`process.reuse_host_memory` (glibc's malloc settings) is left on for every
backend: it tunes the host process, not XLA, and the command lines call it
before `jax.distributed.initialize`, before any backend may be asked for."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import cpac_jax as cj
from cpac_jax import process
from cpac_jax.benchmarks import accelerator
from cpac_jax.benchmarks.accelerator import pytest_counts
from cpac_jax.functional import conv

ROOT = Path(__file__).resolve().parents[1]
XLA_CONV = jax.lax.conv_general_dilated

# (conv_lowering's arguments, keywords, what the CPU takes)
CPU_LOWERINGS = [
    ((conv.PATCHES_BELOW_CHANNELS - 1, (28, 28), (3, 3)), {"batch": 1},
     cj.layers.patches_conv),  # few input channels (the CPAC nets' 1->8)
    ((512, (2, 2), (3, 3)), {"batch": 32},
     cj.layers.patches_conv),  # a map smaller than its kernel (VGG-16's)
    ((conv.WINOGRAD_FROM_CHANNELS, (16, 16), (3, 3)),
     {"batch": conv.WINOGRAD_FROM_TILES // 16},
     cj.layers.winograd_conv),  # wide 3x3 over many tiles
]


def _on(monkeypatch, platform: str) -> None:
  monkeypatch.setattr(jax, "default_backend", lambda: platform)


def _jaxpr(function, *args) -> str:
  """`function`'s jaxpr on `args`, traced afresh (a new function each time:
  JAX caches traces by function, and the platform is not in the key)."""
  return str(jax.make_jaxpr(lambda *a: function(*a))(*args))


@pytest.mark.parametrize("platform", ["gpu", "tpu"])
@pytest.mark.parametrize("args,kwargs,on_cpu", CPU_LOWERINGS)
def test_conv_lowering_takes_xla_conv_off_the_cpu(monkeypatch, platform, args,
                                                  kwargs, on_cpu):
  _on(monkeypatch, "cpu")
  assert conv.conv_lowering(*args, **kwargs) is on_cpu
  _on(monkeypatch, platform)
  assert conv.conv_lowering(*args, **kwargs) is XLA_CONV


@pytest.mark.parametrize("platform", ["gpu", "tpu"])
def test_auto_conv_general_dilated_runs_xla_conv_off_the_cpu(monkeypatch,
                                                             platform):
  # a dense conv of a 2x2 map: patches_conv's slices and matmul on the
  # CPU, one XLA convolution elsewhere (traced only: nothing compiles)
  x, kernel = jnp.ones((2, 2, 2, 16)), jnp.ones((3, 3, 16, 16))

  def jaxpr():
    return _jaxpr(lambda x, k: cj.layers.auto_conv_general_dilated(
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")),
                  x, kernel)

  _on(monkeypatch, "cpu")
  assert "conv_general_dilated" not in jaxpr()
  _on(monkeypatch, platform)
  assert "conv_general_dilated" in jaxpr() and "dot_general" not in jaxpr()


@pytest.mark.parametrize("platform", ["gpu", "tpu"])
def test_compiler_options_give_no_cpu_flags_off_the_cpu(monkeypatch,
                                                        platform):
  # one usable core: the CPU would add xla_cpu_multi_thread_eigen too
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0},
                      raising=False)
  _on(monkeypatch, "cpu")
  assert set(process.compiler_options()) == {
      "xla_cpu_experimental_ynn_fusion_type", "xla_cpu_multi_thread_eigen"}
  _on(monkeypatch, platform)
  assert process.compiler_options() is None
  assert process.compiler_options(ynn_fusions=True) is None


@pytest.mark.slow  # builds layers (random draws compile)
def test_factorized_convs_run_xla_conv_off_the_cpu(monkeypatch):
  # a rank-(4, 4) Tucker conv's core conv and a reconstructed CP conv of
  # 4 input channels: patches_conv on the CPU, XLA's conv elsewhere
  x = jnp.ones((1, 6, 6, 4))
  tucker = cj.layers.TuckerConv(16, 16, (3, 3), rank=(4, 4),
                                implementation="factorized",
                                rngs=nnx.Rngs(0))
  cp = cj.layers.CPConv(4, 8, (3, 3), rank=3, implementation="reconstructed",
                        rngs=nnx.Rngs(0))
  for layer, inputs in ((tucker, jnp.ones((1, 6, 6, 16))), (cp, x)):
    _on(monkeypatch, "cpu")
    assert "conv_general_dilated" not in _jaxpr(layer, inputs)
    _on(monkeypatch, "gpu")
    assert "conv_general_dilated" in _jaxpr(layer, inputs)


@pytest.mark.slow  # builds a net
def test_cpac_net_runs_xla_conv_off_the_cpu(monkeypatch):
  from cpac_jax.models.cpac_cnn import CPACNet

  net = CPACNet(rank=3, implementation="reconstructed", rngs=nnx.Rngs(0))
  _on(monkeypatch, "cpu")  # patches_conv: slices and one matmul
  assert "conv_general_dilated" not in _jaxpr(net, jnp.ones((1, 28, 28, 1)))
  _on(monkeypatch, "gpu")
  assert "conv_general_dilated" in _jaxpr(net, jnp.ones((1, 28, 28, 1)))


def test_pytest_counts_reads_the_last_summary_line():
  output = "\n".join([
      "..F.s", "FAILED tests/test_a.py::test_b - assert 1 == 2",
      "1 failed, 3 passed, 1 skipped, 2 deselected, 2 errors in 4.20s"])
  assert pytest_counts(output) == {"failed": 1, "passed": 3, "skipped": 1,
                                   "deselected": 2, "error": 2}
  assert pytest_counts("== 8 passed in 5.40s ==") == {"passed": 8}
  assert pytest_counts("ImportError while loading conftest") == {}


def _device_run(sweep: dict) -> dict:
  """A record as a GPU run would write it: failures, a layer that raised."""
  meta = {"command": "python -m cpac_jax.benchmarks.accelerator",
          "device": "NVIDIA H100 80GB HBM3 (gpu)", "machine": "x86_64",
          "cpu": "Intel Xeon", "cpu_count": 16, "versions": {"jax": "0.10.2"},
          "protocol": "...", "dry_run": False}
  layer = {"shape": "conv 3x3 64->64 on 32x32, batch 32", "fitted": True,
           "dense_reference": "dense", "compression": 2.0, "rank": 5}
  rows = [{**layer, "variant": "dense", "auto_path": None,
           "forward_vs_dense": 1.0, "backward_vs_dense": 1.0},
          {**layer, "variant": "CPConv f=0.5 auto", "auto_path": "factorized",
           "forward_vs_dense": 0.9, "backward_vs_dense": 1.05},
          {**layer, "variant": "CPConv f=0.5 factorized", "auto_path": None,
           "forward_vs_dense": 0.9, "backward_vs_dense": 1.05},
          {**layer, "variant": "CPConv f=0.5 reconstructed",
           "auto_path": None, "forward_vs_dense": 1.2,
           "backward_vs_dense": 1.3},
          {**layer, "variant": "TTConv f=0.5 auto", "auto_path": "factorized",
           "error": "XlaRuntimeError: RESOURCE_EXHAUSTED"}]
  return {"meta": meta, "rows": [
      {"stage": "device", "seconds": 1.0, "backend": "gpu",
       "kind": "NVIDIA H100 80GB HBM3", "count": 1,
       "platform_version": "PJRT C API\ncuda 12080", "memory_gib": 75.0,
       "plugins": {"jax-cuda12-plugin": "0.10.2"},
       "nvidia_smi": "NVIDIA H100 80GB HBM3, 550.54, 81559 MiB"},
      {"stage": "tests", "seconds": 95.0, "command": "python -m pytest",
       "exit_code": 1, "timed_out": False,
       "counts": {"failed": 2, "passed": 200, "skipped": 25},
       "failures": ["tests/test_a.py::test_b", "tests/test_c.py::test_d"],
       "tail": ""},
      {"stage": "layers", "seconds": 80.0, "rows": rows},
      {"stage": "sweep", "seconds": 150.0, **sweep}]}


@pytest.mark.parametrize("finished", [True, False])
def test_a_device_record_renders_every_stage(finished):
  cpu = {"record": "experiments/benchmarks/sweep.json", "command": "bench",
         "config": "configs/cpac_mnist.py:default_seed0", "cpu": "AMD EPYC",
         "cpu_count": 2, "seconds": 415.0, "epochs": 10, "runs": 13,
         "prorated_seconds": 41.5}
  sweep = {"config": cpu["config"], "epochs": 1, "cpu": cpu,
           "command": "python -m cpac_jax.sweep", "exit_code": 0,
           "timed_out": False, "wall_seconds": 20.75, "runs": 13, "ok": 13,
           "test_accuracy": [0.91, 0.97], "vs_cpu": 0.5}
  if not finished:
    sweep = {**sweep, "exit_code": None, "timed_out": True, "tail": "..."}
    for key in ("runs", "ok", "test_accuracy", "vs_cpu"):
      del sweep[key]
  run = json.loads(json.dumps(_device_run(sweep)))  # as read back
  text = accelerator.render(run)
  assert "# Accelerator check: NVIDIA H100 80GB HBM3" in text
  assert "nvidia-smi: NVIDIA H100" in text and "Dry run" not in text
  assert "2 failed, 200 passed, 25 skipped" in text
  assert "- tests/test_c.py::test_d" in text
  assert ("| CPConv f=0.5 | 2.0x | factorized | 0.90x | 1.05x | 1.05x "
          "| 1.30x |") in text
  assert "| TTConv f=0.5 | 2.0x | factorized | error: XlaRuntimeError" in text
  assert "in 1 of 1 layers and stayed within 1.1x" in text
  summary = accelerator.summary(run)
  if finished:
    assert "| this device | 13 of 13 | 1 | 21 s | 0.500x |" in text
    assert "0.500x the committed 2-CPU time prorated (42 s)" in summary
  else:
    assert "Not finished: stopped at the end of --budget_s." in text
    assert "prorated" not in summary


@pytest.mark.slow  # starts the check's processes: tests, a sweep
def test_the_dry_run_runs_every_stage_into_its_out_folder(tmp_path):
  before = sorted((ROOT / "experiments" / "benchmarks").iterdir())
  result = subprocess.run(
      [sys.executable, "-m", "cpac_jax.benchmarks.accelerator", "--dry_run",
       f"--out={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
      timeout=900, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  record = next(tmp_path.glob("accelerator_*.json"))
  run = json.loads(record.read_text())
  stages = {row["stage"]: row for row in run["rows"]}
  assert list(stages) == ["device", "tests", "layers", "sweep"]
  assert not [s for s, row in stages.items() if "error" in row]
  assert stages["device"]["backend"] == jax.default_backend()
  tests = stages["tests"]
  assert tests["exit_code"] == 0 and tests["counts"]["passed"] > 0
  assert "failed" not in tests["counts"]
  rows = stages["layers"]["rows"]
  assert len({r["shape"] for r in rows}) == 2
  assert all(r["forward_vs_dense"] > 0 and r["backward_vs_dense"] > 0
             for r in rows)
  sweep = stages["sweep"]
  assert sweep["exit_code"] == 0 and sweep["runs"] == sweep["ok"] == 5
  assert sweep["cpu"]["seconds"] > 0 and sweep["vs_cpu"] > 0
  text = record.with_suffix(".md").read_text()
  assert "**Dry run**" in text and "prorated to 1 of its 10 epochs" in text
  # written where it was told, nothing into the committed records
  assert sorted((ROOT / "experiments" / "benchmarks").iterdir()) == before
