"""Wall time of a whole sweep, run one model at a time, with all of a
seed's runs trained together (`--vectorize`), or as shards side by side
(`--vectorize --shard=i/n` in n processes at once, one per core), and how
far their accuracies differ from each other and from a committed table;
beside them, the official code's batch-1 PyTorch loop on the same machine.
Mode `sharded_ynn` is `sharded` with XLA's YNNPACK fusions on, as jaxlib
compiles by default (`config.xla_cpu_ynn_fusions`; cpac_jax turns them off).

  python scripts/bench_sweep.py [--config=configs/cpac_mnist.py:default_seed0]
      [--modes=vectorized,sharded,sharded_ynn,separate,official]
      [--processes=2]
      [--reference=experiments/cpac_mnist/results.csv] [--name=sweep]

The "official" mode (needs the bench extra) times, in this run, one
training step at batch 1 of the official two-conv net in PyTorch, with its
CP conv and with a dense one (scripts/bench_peers.py's cpac section, rank 5),
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
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
from absl import app, flags

from cpac_jax import report, rundir

MODES = {"separate": "one model at a time",
         "vectorized": "`--vectorize`: a seed's runs as one compiled program",
         "sharded": "`--vectorize`, {n} shards side by side (`--shard=i/{n}`"
                    ", one process each)",
         "sharded_ynn": "the same, XLA's YNNPACK fusions on "
                        "(`--config.xla_cpu_ynn_fusions=True`, jaxlib's own "
                        "default; off is cpac_jax's)",
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
_NAME = flags.DEFINE_string("name", "sweep", "the report's file name")
_OUT = flags.DEFINE_string("out", "experiments/benchmarks",
                           "folder for <name>.{md,json}")


def _sweep(mode: str, workdir: Path) -> tuple[float, dict]:
  """(wall seconds, {run key: row}) of the sweep command in `mode`."""
  command = [sys.executable, "-m", "cpac_jax.sweep",
             f"--config={_CONFIG.value}", f"--workdir={workdir}"]
  shards = _PROCESSES.value if mode.startswith("sharded") else 1
  if mode == "sharded_ynn":
    command.append("--config.xla_cpu_ynn_fusions=True")
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
  return seconds, {row["key"]: row for row in rundir.read_results(workdir)}


def _official(rows: list, scratch: Path) -> tuple[float, int]:
  """(seconds, steps) of the official loop for the sweep of `rows` (the
  runs of a mode: factorization and epochs), from the batch-1 step times
  of scripts/bench_peers.py's cpac section, run here."""
  out = scratch / "official"
  subprocess.run([sys.executable, str(Path(__file__).with_name(
      "bench_peers.py")), "--sections=cpac", f"--out={out}"], check=True,
      stdout=subprocess.DEVNULL)
  step = {r["factorization"]: r["step_ms"] / 1e3 for r in json.loads(
      (out / "peers.json").read_text())["rows"]
      if r["steps_per_epoch"] == 60000 and r["library"] == "PyTorch"
      and r["variant"] in ("dense", "official code's CP conv")}
  steps = {"CP": 0, "dense": 0}
  for row in rows:
    steps["dense" if row["factorization"] == "dense" else "CP"] += (
        60000 * int(row["epochs"]))
  return sum(step[f] * n for f, n in steps.items()), sum(steps.values())


def main(argv):
  del argv
  unknown = [m for m in _MODES.value if m not in MODES]
  if unknown or not _MODES.value:
    raise app.UsageError(f"--modes: unknown {unknown}; give some of "
                         f"{list(MODES)}")
  reference = {}
  if _REFERENCE.value:
    reference = {row["key"]: row for row in rundir.read_results(
        Path(_REFERENCE.value).parent) if row["status"] == "ok"}
  missing = [m for m in ("torch", "tltorch")
             if importlib.util.find_spec(m) is None]
  if "official" in _MODES.value and missing:  # before any sweep runs
    raise app.UsageError(f"--modes=official needs {missing} (the bench "
                         'extra): pip install -e ".[bench]"')
  trained = [m for m in _MODES.value if m != "official"]
  if not trained:
    raise app.UsageError("--modes: give a sweep mode to time beside "
                         "'official'")
  seconds, tables, official_steps = {}, {}, 0
  with tempfile.TemporaryDirectory() as scratch:
    for mode in trained:
      seconds[mode], tables[mode] = _sweep(mode, Path(scratch) / mode)
    if "official" in _MODES.value:
      seconds["official"], official_steps = _official(
          list(tables[trained[0]].values()), Path(scratch))
  first = trained[0]
  columns = [*trained] + (["reference"] if reference else [])
  # In sweep order: a one-process mode's (shards list theirs one shard
  # after another), else the reference table's.
  one_process = [m for m in trained if not m.startswith("sharded")]
  order = {key: i for i, key in enumerate(
      tables[one_process[0]] if one_process else reference)}
  rows = []
  for key in sorted(tables[first], key=lambda k: order.get(k, len(order))):
    entry = {"run": tables[first][key]["run"], "key": key}
    for mode in columns:
      table = tables.get(mode, reference)
      if key in table:
        entry[mode] = [float(table[key][w]) for w in
                       ("test_accuracy", "best_test_accuracy")]
    rows.append(entry)
  gaps = {mode: max(abs(a - b) for r in rows if mode in r
                    for a, b in zip(r[mode], r[first]))
          for mode in columns[1:] if any(mode in r for r in rows)}
  device = jax.devices()[0]
  result = {"config": _CONFIG.value, "runs": len(rows),
            "device": f"{device.platform} ({device.device_kind})",
            "machine": platform.machine(), "cpu": report.cpu_name(),
            "cpus": os.cpu_count(),
            "jax": jax.__version__, "processes": _PROCESSES.value,
            "reference": _REFERENCE.value, "seconds": seconds,
            "official_steps": official_steps,
            "max_accuracy_gap_to_first": gaps, "rows": rows}
  out = Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  (out / f"{_NAME.value}.json").write_text(json.dumps(result, indent=2))
  flags_text = " ".join(
      f"--{f.name}={f.serialize().split('=', 1)[1]}"
      for f in (_CONFIG, _MODES, _PROCESSES, _REFERENCE, _NAME))
  lines = [
      "# A whole sweep: one model at a time, vectorized, sharded", "",
      f"`python scripts/bench_sweep.py {flags_text}` on {result['device']}, "
      f"{result['cpu']}, {result['cpus']} CPUs, jax {jax.__version__}. "
      "Wall time of the sweep command, start-up, compilation and report "
      "included, each mode in a fresh workdir, one mode at a time; "
      "\"relative\" is against the first row.", "",
      "| mode | runs | wall time | relative |", "|---|---|---|---|"]
  for mode in _MODES.value:
    text = MODES[mode].format(n=_PROCESSES.value, steps=official_steps)
    wall = (f"{seconds[mode] / 60:.0f} min" if seconds[mode] > 3600
            else f"{seconds[mode]:.0f} s")
    lines.append(f"| {text} | {len(rows)} | {wall} | "
                 f"{seconds[mode] / seconds[first]:.2f}x |")
  lines += [
      "", "Test accuracy (final epoch / best epoch) of each run in each mode"
      + (f", and in the reference table `{_REFERENCE.value}` (the committed "
         "run of the same key)" if reference else "") + ". The largest "
      f"difference from the {first} mode: " + "; ".join(
          f"{mode} {gap:.4f}" for mode, gap in gaps.items())
      + " (floating-point sums in another order, amplified over the "
      "training).", "",
      "| run | " + " | ".join(columns) + " |",
      "|---|" + "---|" * len(columns)]
  for r in rows:
    lines.append(f"| {r['run']} | " + " | ".join(
        f"{r[m][0]:.4f} / {r[m][1]:.4f}" if m in r else "-" for m in columns)
        + " |")
  (out / f"{_NAME.value}.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
