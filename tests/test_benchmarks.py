"""The benchmark harness: its timing protocol, its records, and that every
committed benchmark file is what its record renders to; the inference
benchmark's models, counts and quick run."""

import importlib
import json
import subprocess
import sys
import types
from pathlib import Path

import ml_collections
import pytest
from absl import app, flags
from flax import nnx

import cpac_jax as cj
from configs import (
  compress_fashion_mnist,
  compress_vit_fashion_mnist,
  cpac_mnist,
)
from cpac_jax import report
from cpac_jax.benchmarks import harness, inference, tt_dense
from cpac_jax.benchmarks.__main__ import RECORDS, block

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "experiments" / "benchmarks"


@pytest.fixture
def parsed_flags():
  """absl's flags parsed with their defaults, restored after."""
  was_parsed = flags.FLAGS.is_parsed()
  if not was_parsed:
    flags.FLAGS.mark_as_parsed()
  saved = flags.FLAGS.flag_values_dict()
  yield flags.FLAGS
  for name, value in saved.items():
    setattr(flags.FLAGS, name, value)
  if not was_parsed:
    flags.FLAGS.unparse_flags()


def test_measure_times_every_kind_and_records_what_fails():
  calls = []

  def build(name):
    return lambda: {"forward": lambda: calls.append(name),
                    "backward": lambda: calls.append(name)}

  def broken():
    raise ValueError("no such path")

  rows = harness.measure([harness.Variant({"variant": "a"}, build("a")),
                          harness.Variant({"variant": "b"}, build("b")),
                          harness.Variant({"variant": "c"}, broken)],
                         repeats=3)
  for row in rows[:2]:
    for kind in ("forward", "backward"):
      assert row[f"{kind}_ms"] >= 0 and row[f"{kind}_iqr_ms"] >= 0
      assert row[f"{kind}_faults"] >= 0
  assert rows[2] == {"variant": "c", "error": "ValueError: no such path"}
  # two warm-ups, then per round an untimed and a timed call, per kind
  assert calls.count("a") == calls.count("b") == 2 * 2 + 3 * 2 * 2


def test_measure_shuffles_the_order_of_each_round():
  order = []
  variants = [harness.Variant({"variant": v}, lambda v=v: {
      "call": lambda: order.append(v)}) for v in "abcd"]
  harness.measure(variants, repeats=6)
  rounds = ["".join(order[8 + 8 * i:16 + 8 * i:2]) for i in range(6)]
  assert all(sorted(r) == list("abcd") for r in rounds)
  assert len(set(rounds)) > 1, rounds


def test_a_variant_slower_than_slow_s_is_reported_not_timed():
  rows = harness.measure([harness.Variant(
      {"variant": "slow"}, lambda: {"call": lambda: sum(range(10**5))})],
      repeats=2, slow_s=0.0)
  assert rows[0]["error"].startswith("too slow to time")
  assert "call_ms" not in rows[0]


def _benchmark(tmp_path, render=None):
  """A benchmark module as the harness expects one."""
  module = types.ModuleType("fake_bench")
  module.__spec__ = types.SimpleNamespace(name="fake_bench")
  module.NAME, module.REPEATS, module.PACKAGES = "fake", 2, ()
  module.prepare = lambda: None
  module.rows = lambda repeats: harness.measure(
      [harness.Variant({"variant": "x"}, lambda: {"call": lambda: None})],
      repeats)
  module.render = render or (lambda run: "| variant |\n| x |\n"
                             + harness.describe(run["meta"]))
  return module


def test_run_writes_the_record_and_its_table(tmp_path, parsed_flags):
  parsed_flags.out = str(tmp_path)
  bench = _benchmark(tmp_path)
  harness.run(bench)
  run = json.loads((tmp_path / "fake.json").read_text())
  assert run["meta"]["command"] == "python -m fake_bench"
  assert run["meta"]["repeats"] == 2 and "2 timed calls" in run["meta"][
      "protocol"]
  assert {"device", "cpu", "cpu_count", "versions"} <= set(run["meta"])
  assert (tmp_path / "fake.md").read_text() == bench.render(run)
  # --render_only rewrites the table from the record, timing nothing
  bench.rows = None
  bench.render = lambda run: "rendered again"
  parsed_flags.render_only = True
  harness.run(bench)
  assert (tmp_path / "fake.md").read_text() == "rendered again"


def test_a_failing_render_leaves_no_files(tmp_path, parsed_flags):
  parsed_flags.out = str(tmp_path)

  def render(run):
    raise KeyError("column")

  with pytest.raises(KeyError):
    harness.run(_benchmark(tmp_path, render))
  assert list(tmp_path.iterdir()) == []


def test_bad_flags_are_refused_before_anything_runs(tmp_path, parsed_flags):
  parsed_flags.out = str(tmp_path)
  bench = _benchmark(tmp_path)
  bench.rows = None  # would raise if called
  parsed_flags.repeats = 0
  with pytest.raises(app.UsageError, match="--repeats=0"):
    harness.run(bench)
  parsed_flags.repeats = None
  parsed_flags.render_only = True
  with pytest.raises(app.UsageError, match="no .*fake.json"):
    harness.run(bench)


@pytest.mark.parametrize("module", sorted(RECORDS))
def test_every_committed_table_is_its_record_rendered(module, parsed_flags):
  """No committed benchmark table drifts from its record (rerender with
  `python -m cpac_jax.benchmarks.MODULE --render_only`)."""
  parsed_flags.out = str(BENCHMARKS)
  bench = importlib.import_module(f"cpac_jax.benchmarks.{module}")
  for name in RECORDS[module]:
    run = json.loads((BENCHMARKS / f"{name}.json").read_text())
    assert bench.render(run) == (BENCHMARKS / f"{name}.md").read_text(), (
        f"{name}.md is stale: python -m cpac_jax.benchmarks.{module} "
        "--render_only" + (f" --name={name}" if module == "sweep" else ""))


def test_the_readme_figures_are_the_records(parsed_flags):
  """The benchmarks README's figures are generated from the records
  (rewrite with `python -m cpac_jax.benchmarks`)."""
  parsed_flags.out = str(BENCHMARKS)
  assert report.block(BENCHMARKS / "README.md", "benchmarks") == block(), (
      "stale: python -m cpac_jax.benchmarks")


def test_every_benchmark_is_listed():
  modules = {p.stem for p in (ROOT / "cpac_jax" / "benchmarks").glob("*.py")}
  assert modules - {"__init__", "__main__", "harness", "torch_models"} == (
      set(RECORDS))


def test_tt_dense_holds_auto_to_the_fewest_plans_multiply_adds():
  """Faster than dense where the fewest plan needs fewer multiply-adds
  (a tie is a miss), else within SLACK times that plan's ratio."""
  def auto(macs, forward, backward):
    return {"source": "s", "shape": "a->b", "batch": 1,
            "variant": "TTDense auto", "fewest_plan": "(0)(1) L->R",
            "fewest_vs_dense_macs": macs, "auto_plan": "(0)(1) L->R",
            "auto_vs_dense_macs": macs, "forward_vs_dense": forward,
            "backward_vs_dense": backward}

  rows = [auto(0.5, 0.9, 1.0), auto(2.0, 2.4, 2.5),
          {**auto(2.0, 0, 0), "error": "Slow: too slow"}]
  del rows[2]["forward_vs_dense"], rows[2]["backward_vs_dense"]
  assert [tt_dense.target(r) for r in rows] == pytest.approx([1.0, 2.4, 2.4])
  assert [(tt_dense.met(r, "forward"), tt_dense.met(r, "backward"))
          for r in rows] == [(True, False), (True, False), (False, False)]
  run = {"meta": {"command": "c", "device": "cpu", "cpu": "x", "machine": "m",
                  "cpu_count": 2, "versions": {}, "protocol": "p"},
         "rows": rows}
  assert "| 2.40x | yes, no |" in tt_dense.render(run)
  assert "failed: Slow: too slow" in tt_dense.render(run)
  assert ("faster in 1 of 1 forward and 0 of 1 fwd+bwd; elsewhere within "
          "1.2x the dense time times that plan's multiply-add ratio in 1 of "
          "2 forward and 0 of 2 fwd+bwd") in tt_dense.summary(run)


# -- the inference benchmark -------------------------------------------------

def test_inference_times_the_models_the_configs_build():
  def swept(config, compression):
    return any(compression["factorization"] in group.get(
        "compress.factorization", []) and compression["budget"] in group.get(
        "compress.budget", []) for group in config.sweep)

  cpac = cpac_mnist.get_config().model
  assert (inference.CPAC_RANK, inference.CPAC_IMPLEMENTATION) == (
      cpac.rank, cpac.implementation)
  cnn = compress_fashion_mnist.get_config()
  assert cnn.model.name == "cnn" and not cnn.model.get("kwargs")
  assert inference.CNN_COMPRESSION["exclude"] == tuple(cnn.compress.exclude)
  assert swept(cnn, inference.CNN_COMPRESSION)
  vit = compress_vit_fashion_mnist.get_config("select")
  assert inference.VIT_KWARGS == dict(vit.model.kwargs)
  assert inference.VIT_COMPRESSION["exclude"] == tuple(vit.compress.exclude)
  assert swept(vit, inference.VIT_COMPRESSION)


@pytest.mark.parametrize("name, kwargs", [("cnn", {}),
                                          ("vit", inference.VIT_KWARGS)])
def test_torch_twin_holds_the_parameters_of_our_dense_model(name, kwargs):
  pytest.importorskip("torch")
  from cpac_jax.benchmarks import torch_models
  config = ml_collections.ConfigDict({"name": name, "factorization": "dense",
                                      "rank": 0, "kwargs": kwargs})
  ours = cj.models.build(config, (28, 28, 1), 10, nnx.Rngs(0))
  twin = {"cnn": torch_models.CNN, "vit": torch_models.ViT}[name](**kwargs)
  assert sum(p.numel() for p in twin.parameters()) == cj.count_params(ours)


def _inference_run():
  """An inference record by hand: one layer shape at two batch sizes, one
  model whose torch.compile failed."""
  def layer(batch, variant, ms, path=None, library="cpac_jax"):
    return {"section": "layers", "batch": batch, "shape": f"s, batch {batch}",
            "fitted": True, "library": library, "variant": variant,
            "forward_ms": ms, "forward_iqr_ms": 0.0, "forward_vs_dense": ms,
            "dense_reference": "dense", "params": 10, "compression": 2.0,
            "rank": [2, 2], "flops_vs_dense": {"factorized": 0.5,
                                               "reconstructed": 1.0},
            "auto_path": path}

  rows = []
  for batch, times in ((1, {"L": (1.5, 1.0, 1.4), "M": (1.05, 1.0, 2.0)}),
                       (64, {"L": (1.0, 1.0, 0.95)})):
    rows.append({**layer(batch, "dense", 1.0, library="Flax"),
                 "flops_vs_dense": {}, "rank": None})
    for name, (auto, factorized, reconstructed) in times.items():
      rows += [layer(batch, f"{name} auto", auto, "reconstructed" if name
                     == "L" else "factorized"),
               layer(batch, f"{name} factorized", factorized),
               layer(batch, f"{name} reconstructed", reconstructed)]
    rows.append({**layer(batch, "dense", 0.5, library="PyTorch"),
                 "flops_vs_dense": {}, "rank": None})
  model = {"section": "models", "batch": 1, "model": "net",
           "forward_iqr_ms": 0.0}
  rows += [{**model, "library": "Flax", "variant": "dense", "params": 8,
            "compression": 1.0, "forward_ms": 2.0, "forward_vs_dense": 1.0},
           {**model, "library": "PyTorch", "variant": inference.COMPILED,
            "params": 8, "compression": 1.0,
            "error": "BackendCompilerFailed: no compiler"}]
  meta = {"command": "python -m cpac_jax.benchmarks.inference",
          "device": "cpu", "cpu": "cpu", "machine": "x86_64",
          "cpu_count": 2, "versions": {"jax": "0"}, "protocol": "p"}
  return {"meta": meta, "rows": rows}


def test_inference_counts_autos_misses_per_batch():
  run = _inference_run()
  found = inference.autos(run["rows"])
  assert [(a["batch"], a["layer"], a["faster"], a["miss"]) for a in found] == [
      (1, "L", "factorized", True), (1, "M", "factorized", False),
      (64, "L", "reconstructed", False)]
  assert [a["vs_faster"] for a in found] == pytest.approx(
      [1.5, 1.05, 1 / 0.95])
  text = inference.render(run)
  assert ("- Batch 1: `auto` missed in 1 of 2 layers (1 of 2 on the shapes "
          "its cost was fitted to); it took the faster path in 1.") in text
  assert "- Batch 64: `auto` missed in 0 of 1 layers" in text
  assert ("| 1 | s, batch 1 | L | reconstructed | factorized | 1.50x |"
          in text)
  assert "failed: BackendCompilerFailed: no compiler" in text
  summary = inference.summary(run)
  assert ("- Layers at batch 1: `auto` over 1.1x its faster path's forward "
          "time in 1 of 2 layers (median 1.27x); PyTorch's dense layer "
          "0.50x-0.50x the fastest dense Flax layer's forward time over 1 "
          "shapes.") in summary
  assert "net, batch 1" in summary and "failed: BackendCompilerFailed" in (
      summary)


def test_inference_quick_refuses_the_records_folder(parsed_flags):
  pytest.importorskip("torch")
  parsed_flags.quick = True
  parsed_flags.out = inference.DEFAULT_OUT
  with pytest.raises(app.UsageError, match="--quick writes no record"):
    inference.prepare()


@pytest.mark.slow  # a process of its own: JAX, PyTorch and some 40 compiles
def test_inference_quick_times_every_section_into_its_out_folder(tmp_path):
  pytest.importorskip("torch")
  result = subprocess.run(
      [sys.executable, "-m", "cpac_jax.benchmarks.inference", "--quick",
       f"--out={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
      timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  run = json.loads((tmp_path / "inference.json").read_text())
  assert run["meta"]["quick"] is True
  assert run["meta"]["repeats"] == inference.QUICK_REPEATS
  rows = run["rows"]
  assert not [r for r in rows if "error" in r]
  paths = ("auto", "factorized", "reconstructed")
  for batch in inference.BATCHES:
    conv = {(r["library"], r["variant"]) for r in rows
            if r.get("shape") == f"conv 3x3 8->8 on 8x8, batch {batch}"}
    assert {("Flax", "dense"), ("PyTorch", "dense"),
            *(("cpac_jax", f"{layer} f=0.5 auto")
              for layer in ("CPConv", "TuckerConv", "TTConv"))} <= conv
    dense = {(r["library"], r["variant"]) for r in rows
             if r.get("shape") == f"dense 16->8, batch {batch}"}
    assert dense == {("Flax", "dense"), ("PyTorch", "dense"), *(
        ("cpac_jax", f"{layer} f=0.5 {path}") for path in paths
        for layer in ("TuckerDense", "TTDense", "LowRankDense"))}
    models = [(r["library"], r["variant"]) for r in rows
              if r["section"] == "models" and r["batch"] == batch]
    assert models == [("Flax", "dense"), *(
        ("cpac_jax", f"CP rank 5, {path}"
         + (" (the config's)" if path == "reconstructed" else ""))
        for path in paths), ("PyTorch", "dense, eager")]
  # each ratio against the fastest dense Flax layer of its group (or the
  # dense Flax net), and PyTorch's twins hold the same parameters
  groups = {}
  for r in rows:
    groups.setdefault((r["batch"], r.get("shape", r.get("model"))),
                      []).append(r)
  for group in groups.values():
    flax = [r for r in group if r["library"] == "Flax"]
    reference = min(r["forward_ms"] for r in flax)
    for r in group:
      assert r["forward_vs_dense"] == pytest.approx(
          r["forward_ms"] / reference)
      if r["library"] == "PyTorch":
        assert r["params"] == flax[0]["params"]
  # the table is the record rendered, its misses counted from the times
  text = (tmp_path / "inference.md").read_text()
  assert text == inference.render(run) and "**Quick run**" in text
  for batch in inference.BATCHES:
    timed = {r["variant"]: r["forward_ms"] for r in rows
             if r.get("shape") == f"dense 16->8, batch {batch}"
             and r["library"] == "cpac_jax"}
    misses = sum(timed[f"{layer} auto"] > 1.1 * min(
        timed[f"{layer} factorized"], timed[f"{layer} reconstructed"])
        for layer in ("TuckerDense f=0.5", "TTDense f=0.5",
                      "LowRankDense f=0.5"))
    assert f"- Batch {batch}: `auto` missed in {misses} of 3 layers" in text
