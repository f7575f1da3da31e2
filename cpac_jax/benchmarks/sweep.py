"""Wall time of a whole sweep, run one model at a time, with all of a
seed's runs trained together (`--vectorize`), or as shards side by side
(`--vectorize --shard=i/n` in n processes at once, one per core), and how
far their accuracies differ from each other and from a committed table;
beside them, the official code's batch-1 PyTorch loop on the same machine.
Mode `sharded_ynn` is `sharded` with XLA's YNNPACK fusions on, as jaxlib
compiles by default (`config.xla_cpu_ynn_fusions`; cpac_jax turns them off).
Mode `bfloat16` is `vectorized` with every model computing in bfloat16
(`config.dtype`; parameters and Adam state stay float32): mixed precision's
speed and accuracy against `vectorized`, in the same run:

  python -m cpac_jax.benchmarks.sweep --config=configs/cpac_mnist.py:quick \
      --modes=vectorized,bfloat16 --reference= --name=precision

  python -m cpac_jax.benchmarks.sweep
      [--config=configs/cpac_mnist.py:default_seed0]
      [--modes=vectorized,sharded,sharded_ynn,separate,official]
      [--processes=2]
      [--reference=experiments/cpac_mnist/results.csv] [--name=sweep]

The "official" mode (needs the bench extra) times, in this run, one
training step at batch 1 of the official two-conv net in PyTorch, with its
CP conv and with a dense one (the peer benchmark's cpac section, rank 5),
and multiplies by the sweep's steps: its CP and dense models, their epochs,
60,000 steps an epoch. Steps only (no data loading, no evaluation), so a
lower bound on the official loop; it trains nothing.

Runs the sweep command once per mode, in fresh scratch workdirs, as a user
would (start-up, compilation and the report included), then writes
experiments/benchmarks/<name>.{md,json}: each mode's wall time, its ratio to
the first mode's, and each run's test accuracy in every mode beside the
reference table's row of the same run key (where it has one). Needs the
data (scripts/fetch_data.sh).
"""

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

import cpac_jax as cj
from cpac_jax.benchmarks import harness

NAME, REPEATS, PACKAGES = "sweep", 1, ()
PROTOCOL = ("wall time of the sweep command, start-up, compilation and "
            "report included, each mode once, in a fresh workdir, one mode "
            "at a time")
MODES = {"separate": "one model at a time",
         "vectorized": "`--vectorize`: a seed's runs as one compiled program",
         "sharded": "`--vectorize`, {n} shards side by side (`--shard=i/{n}`"
                    ", one process each)",
         "sharded_ynn": "the same, XLA's YNNPACK fusions on "
                        "(`--config.xla_cpu_ynn_fusions=True`, jaxlib's own "
                        "default; off is cpac_jax's)",
         "bfloat16": "`--vectorize`, every model computing in bfloat16 "
                     "(`--config.dtype=bfloat16`; parameters and Adam "
                     "state float32)",
         "official": "the official batch-1 PyTorch loop, its CP conv (rank 5)"
                     " and dense: steps only, {steps:,} of them at the step "
                     "times measured in this run"}
_CONFIG = flags.DEFINE_string("config", "configs/cpac_mnist.py:default_seed0",
                              "the sweep's config (with preset)")
_MODES = flags.DEFINE_list("modes", ["vectorized", "sharded", "separate",
                                     "official"],
                           f"modes to time, in order; of {list(MODES)}")
_PROCESSES = flags.DEFINE_integer("processes", 2,
                                  "shards side by side in the sharded mode")
_REFERENCE = flags.DEFINE_string(
    "reference", "experiments/cpac_mnist/results.csv",
    "a committed results.csv to set each run's accuracy beside ('' for none)")
_NAME = flags.DEFINE_string("name", NAME, "the report's file name")


def name() -> str:
  return _NAME.value


def settings() -> dict:
  return {"config": _CONFIG.value, "modes": _MODES.value,
          "processes": _PROCESSES.value, "reference": _REFERENCE.value,
          "name": _NAME.value}


def prepare() -> None:
  """Checks the flags before any sweep runs; the sweeps run in processes
  of their own."""
  unknown = [m for m in _MODES.value if m not in MODES]
  if unknown or not _MODES.value:
    raise app.UsageError(f"--modes: unknown {unknown}; give some of "
                         f"{list(MODES)}")
  if not [m for m in _MODES.value if m != "official"]:
    raise app.UsageError("--modes: give a sweep mode to time beside "
                         "'official'")
  missing = [m for m in ("torch", "tltorch")
             if importlib.util.find_spec(m) is None]
  if "official" in _MODES.value and missing:
    raise app.UsageError(f"--modes=official needs {missing} (the bench "
                         'extra): pip install -e ".[bench]"')


def _accuracies(rows) -> dict:
  """{run key: {"run", "accuracy": [final, best]}} of results.csv rows."""
  return {row["key"]: {"run": row["run"], "accuracy": [
      float(row[w]) for w in ("test_accuracy", "best_test_accuracy")]}
      for row in rows if row["status"] == "ok"}


def _sweep(mode: str, workdir: Path) -> dict:
  """The row of the sweep command in `mode`: its wall seconds and runs."""
  command = [sys.executable, "-m", "cpac_jax.sweep",
             f"--config={_CONFIG.value}", f"--workdir={workdir}"]
  shards = _PROCESSES.value if mode.startswith("sharded") else 1
  if mode == "sharded_ynn":
    command.append("--config.xla_cpu_ynn_fusions=True")
  if mode == "bfloat16":
    command.append("--config.dtype=bfloat16")
  cores = sorted(os.sched_getaffinity(0))

  def pin(i):  # shard i to core i (mod the cores): one process per core
    return lambda: os.sched_setaffinity(0, {cores[i % len(cores)]})

  start = time.perf_counter()
  processes = [subprocess.Popen(
      command + (["--vectorize"] if mode != "separate" else [])
      + ([f"--shard={i}/{shards}"] if shards > 1 else []),
      preexec_fn=pin(i) if shards > 1 else None) for i in range(shards)]
  codes = [p.wait() for p in processes]
  seconds = time.perf_counter() - start
  if any(codes):
    raise RuntimeError(f"the {mode} sweep failed (exit codes {codes})")
  return {"mode": mode, "seconds": seconds,
          "runs": _accuracies(cj.rundir.read_results(workdir))}


def _official(runs: dict, scratch: Path) -> dict:
  """The row of the official loop for the sweep of `runs` (a mode's:
  factorization and epochs from each run's name), from the batch-1 step
  times of the peer benchmark's cpac section, run here."""
  out = scratch / "official"
  subprocess.run([sys.executable, "-m", "cpac_jax.benchmarks.peers",
                  "--sections=cpac", f"--out={out}"], check=True,
                 stdout=subprocess.DEVNULL)
  step = {r["factorization"]: r["step_ms"] / 1e3 for r in json.loads(
      (out / "peers.json").read_text())["rows"]
      if r["steps_per_epoch"] == 60000 and r["library"] == "PyTorch"
      and r["variant"] in ("dense", "official code's CP conv")}
  steps = {"CP": 0, "dense": 0}
  for row in runs:
    steps["dense" if row["factorization"] == "dense" else "CP"] += (
        60000 * int(row["epochs"]))
  return {"mode": "official", "steps": sum(steps.values()),
          "seconds": sum(step[f] * n for f, n in steps.items())}


def rows(repeats: int) -> list[dict]:
  del repeats  # each mode runs once
  rows = []
  with tempfile.TemporaryDirectory() as scratch:
    for mode in _MODES.value:
      if mode != "official":
        rows.append(_sweep(mode, Path(scratch) / mode))
    if "official" in _MODES.value:
      first = Path(scratch) / rows[0]["mode"]
      rows.append(_official(cj.rundir.read_results(first), Path(scratch)))
  if _REFERENCE.value:
    rows.append({"mode": "reference", "seconds": None,
                 "runs": _accuracies(cj.rundir.read_results(
                     Path(_REFERENCE.value).parent))})
  return rows


def render(run: dict) -> str:
  """NAME.md from a run (as NAME.json holds it)."""
  meta = run["meta"]
  modes = {r["mode"]: r for r in run["rows"]}
  timed = [r for r in run["rows"] if r["seconds"] is not None]
  trained = [r for r in run["rows"] if "runs" in r]
  first = trained[0]
  keys = list(first["runs"])
  official_steps = modes.get("official", {}).get("steps", 0)
  lines = [
      "# A whole sweep: one model at a time, vectorized, sharded", "",
      f"{harness.describe(meta)} \"Relative\" is against the first row.",
      "", "| mode | runs | wall time | relative |", "|---|---|---|---|"]
  for r in timed:
    text = MODES[r["mode"]].format(n=meta["processes"], steps=official_steps)
    wall = (f"{r['seconds'] / 60:.0f} min" if r["seconds"] > 3600
            else f"{r['seconds']:.0f} s")
    lines.append(f"| {text} | {len(keys)} | {wall} | "
                 f"{r['seconds'] / timed[0]['seconds']:.2f}x |")
  runs = {r["mode"]: _aligned(first["runs"], r["runs"]) for r in trained}
  gaps = {r["mode"]: max(abs(a - b) for key in keys if key in runs[r["mode"]]
                         for a, b in zip(runs[r["mode"]][key]["accuracy"],
                                         first["runs"][key]["accuracy"]))
          for r in trained[1:]}
  lines += [
      "", "Test accuracy (final epoch / best epoch) of each run in each mode"
      + (f", and in the reference table `{meta['reference']}` (the committed "
         "run of the same key)" if "reference" in modes else "")
      + f". The largest difference from the {first['mode']} mode: "
      + "; ".join(f"{mode} {gap:.4f}" for mode, gap in gaps.items())
      + " (floating-point sums in another order, or in another precision,"
      " amplified over the training).", "",
      "| run | " + " | ".join(r["mode"] for r in trained) + " |",
      "|---|" + "---|" * len(trained)]
  for key in keys:
    lines.append(f"| {first['runs'][key]['run']} | " + " | ".join(
        "{:.4f} / {:.4f}".format(*runs[r["mode"]][key]["accuracy"])
        if key in runs[r["mode"]] else "-" for r in trained) + " |")
  return "\n".join(lines) + "\n"


def _aligned(first: dict, runs: dict) -> dict:
  """`runs` ({run key: entry}) keyed as `first` is: by run key, or, for a
  mode whose overrides change every key (`--config.dtype`), by the run's
  name, which the sweep's fields alone make."""
  if set(first) & set(runs):
    return runs
  by_name = {entry["run"]: entry for entry in runs.values()}
  return {key: by_name[entry["run"]] for key, entry in first.items()
          if entry["run"] in by_name}


def summary(run: dict) -> str:
  """The run's headline figures, for the benchmarks' README."""
  meta = run["meta"]
  timed = [r for r in run["rows"] if r["seconds"] is not None]
  first = timed[0]
  parts = [f"{r['mode']} {r['seconds']:.0f} s"
           + (f" ({r['seconds'] / first['seconds']:.2f}x)" if r is not first
              else "") for r in timed]
  runs = len(next(r for r in run["rows"] if "runs" in r)["runs"])
  return (f"- `{meta['config']}`, {runs} runs, wall time by mode: "
          + "; ".join(parts) + ".")

if __name__ == "__main__":
  harness.main(sys.modules[__name__])
