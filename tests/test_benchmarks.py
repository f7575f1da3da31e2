"""The benchmark harness: its timing protocol, its records, and that every
committed benchmark file is what its record renders to."""

import importlib
import json
import types
from pathlib import Path

import pytest
from absl import app, flags

from cpac_jax import report
from cpac_jax.benchmarks import harness
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
