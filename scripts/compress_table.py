"""The compression table: Tucker-2 compress + fine-tune (global and uniform
ranks) against the same architecture trained from scratch and the dense
net, and CP compress + fine-tune (global ranks) and its architecture from
scratch beside them, from
experiments/compress_fashion_mnist/results.csv, and its plot.

  python scripts/compress_table.py [experiments/compress_fashion_mnist]

For each budget and condition: the compressed convs' weights and their
compression, test accuracy over seeds (mean, sample std, n), and the gap in
points to the dense net, to the same factorization trained from scratch,
to Tucker-2 with uniform ranks at the same budget (for a global-ranks row:
for Tucker-2 the rank rule alone, for CP the rank rule and the
factorization together) and (for CP) to Tucker-2 in the same condition,
paired by seed (a seed's runs share the dense teacher and the data
order), with the 95%
Student-t interval of the mean gap. Written into the folder's README.md
between `<!-- compress:begin -->` and `<!-- compress:end -->`, as
comparison.png beside it, and printed; each compressed run's ranks into
allocations.md, from its run folder or, that gone, from the file before.

From the "data_aware" preset's folder (data_aware/, its own dense nets):
each global compression plain and data-aware, test accuracy before
fine-tuning (before_fine_tuning.csv, brought up to date from the run
folders) and after it, and the data-aware minus plain gaps paired by
seed, between `<!-- data_aware:begin -->` and `<!-- data_aware:end -->`.
"""

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from matplotlib.figure import Figure

from configs import compress_fashion_mnist
from cpac_jax import report, rundir, stats
from cpac_jax.config import expand, run_key, setting

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "experiments" / "compress_fashion_mnist"
DATA_AWARE = FOLDER / "data_aware"
AWARE = compress_fashion_mnist.CALIBRATION_EXAMPLES
TUNE = compress_fashion_mnist.TUNE_EPOCHS
LONG = compress_fashion_mnist.DENSE_EPOCHS + TUNE
# (factorization, init, allocation, epochs)
TUCKER, UNIFORM, SCRATCH, CP, CP_SCRATCH, CP_SCRATCH_SHORT = (
    ("tucker", "compressed", "global", TUNE),
    ("tucker", "compressed", "uniform", TUNE),
    ("tucker", "scratch", "global", LONG), ("cp", "compressed", "global", TUNE),
    ("cp", "scratch", "global", LONG), ("cp", "scratch", "global", TUNE))
CONDITIONS = (TUCKER, UNIFORM, SCRATCH, CP, CP_SCRATCH, CP_SCRATCH_SHORT)
LABELS = {TUCKER: "Tucker-2 compress + fine-tune, global ranks",
          UNIFORM: "Tucker-2 compress + fine-tune, uniform ranks",
          SCRATCH: "Tucker-2 from scratch (global ranks' architecture)",
          CP: "CP compress + fine-tune, global ranks",
          CP_SCRATCH: "CP from scratch (CP global ranks' architecture)",
          CP_SCRATCH_SHORT: f"CP from scratch, {TUNE} epochs (the "
                            "fine-tuning's)"}
# Each condition's from-scratch twin (as many epochs as the dense net and
# the fine-tuning together; and as many as the fine-tuning alone), and
# CP's Tucker-2 counterpart.
SCRATCH_OF = {TUCKER: SCRATCH, UNIFORM: SCRATCH, CP: CP_SCRATCH}
SHORT_SCRATCH_OF = {CP: CP_SCRATCH_SHORT}
TUCKER_OF = {CP: TUCKER, CP_SCRATCH: SCRATCH}


def _gap(ours: dict, theirs: dict) -> str:
  """Paired gap in points, mean and 95% interval, over shared seeds."""
  return stats.gap_text(stats.paired_gaps(ours, theirs))


def _cell(by_seed: dict) -> str:
  return stats.mean_std_text(list(by_seed.values()))


def collect(rows: list[dict]) -> tuple[dict, dict]:
  """(dense accuracy by seed, {(budget, factorization, init, allocation,
  epochs): {"acc": by seed, "weights", "compression"}})."""
  dense, groups = {}, defaultdict(lambda: {"acc": {}})
  for row in rows:
    if row["status"] != "ok":
      continue
    accuracy = float(row["test_accuracy"])
    if row["factorization"] == "dense":
      dense[int(row["seed"])] = accuracy
      continue
    allocation, budget = json.loads(row["rank"]).split()
    group = groups[(float(budget), row["factorization"], row["init"],
                    allocation, int(row["epochs"]))]
    group["acc"][int(row["seed"])] = accuracy
    group.setdefault("weights", []).append(int(row["layer_params"]))
    group.setdefault("ratios", []).append(float(row["layer_compression"]))
    group["compression"] = statistics.fmean(group["ratios"])
  return dense, groups


def _weights(values: list[int]) -> str:
  """The seeds' counts: one number, or their range (the global rule's
  ranks follow each seed's trained weights)."""
  low, high = min(values), max(values)
  return f"{low:,}" if low == high else f"{low:,}-{high:,}"


def table(rows: list[dict]) -> str:
  dense, groups = collect(rows)
  lines = [
      "| budget | condition | compressed convs' weights | their compression "
      "| test accuracy, mean ± std (n) | vs dense, points [95%] | "
      f"vs scratch, points [95%] | vs scratch, {TUNE} epochs, points [95%] "
      "| vs Tucker-2 uniform ranks, points [95%] | vs Tucker-2, points "
      "[95%] |",
      "|---|---|---:|---:|---|---|---|---|---|---|",
      f"| 1 | dense | 138,240 | 1.0x | {_cell(dense)} | | | | | |"]
  for budget in sorted({b for b, *_ in groups}, reverse=True):
    acc = {c: groups.get((budget, *c), {"acc": {}})["acc"]
           for c in CONDITIONS}
    for condition in CONDITIONS:
      group = groups.get((budget, *condition))
      if group is None:
        continue
      scratch = (_gap(group["acc"], acc[SCRATCH_OF[condition]])
                 if condition in SCRATCH_OF else "")
      short = (_gap(group["acc"], acc[SHORT_SCRATCH_OF[condition]])
               if condition in SHORT_SCRATCH_OF else "")
      # Against Tucker-2 with uniform ranks, for Tucker-2's and CP's
      # global-ranks rows alike (the column's header says so).
      uniform = (_gap(group["acc"], acc[UNIFORM]) if condition in (TUCKER, CP)
                 else "")
      tucker = (_gap(group["acc"], acc[TUCKER_OF[condition]])
                if condition in TUCKER_OF else "")
      lines.append(
          f"| {budget} | {LABELS[condition]} | {_weights(group['weights'])} "
          f"| {group['compression']:.1f}x | {_cell(group['acc'])} | "
          f"{_gap(group['acc'], dense)} | {scratch} | {short} | {uniform} | "
          f"{tucker} |")
  return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
  dense, groups = collect(rows)
  fig = Figure(figsize=(6.4, 4.2))
  ax = fig.subplots()
  ax.axhline(100 * statistics.fmean(dense.values()), color="black", lw=1,
             ls="--", label=f"dense (mean of {len(dense)})")
  for offset, condition in zip((-0.06, -0.03, 0.0, 0.03, 0.06, 0.09),
                               CONDITIONS):
    points = sorted((g["compression"], g["acc"]) for (b, *c), g
                    in groups.items() if tuple(c) == condition)
    if not points:
      continue
    xs = [x * (1 + offset) for x, _ in points]
    means = [100 * statistics.fmean(acc.values()) for _, acc in points]
    line, = ax.plot(xs, means, marker="o", label=LABELS[condition])
    for x, (_, acc) in zip(xs, points):
      ax.scatter([x] * len(acc), [100 * a for a in acc.values()], s=8,
                 color=line.get_color(), alpha=0.5)
  ax.set_xscale("log")
  # Each condition is drawn shifted by its offset (-6% to +9% of x) so that
  # conditions at the same budget do not hide each other; the label says so.
  ax.set_xlabel("compression of the four compressed convs (x)\n"
                "(conditions drawn shifted by -6% to +9% to keep apart)")
  ax.set_ylabel("test accuracy (%)")
  ax.set_title("CNN on Fashion-MNIST: compression (dots: seeds)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


ALLOCATION_HEADER = (
    "| seed | factorization | budget | allocation | init | epochs | "
    + " | ".join(f"{p} rank (error)" for p in (
        "convs/1", "convs/2", "convs/3", "convs/4")) + " |\n"
    "|---|---|---|---|---|---|---|---|---|---|")


def _allocation_key(cells) -> tuple:
  """(seed, factorization, budget, allocation, init, epochs) of a line."""
  return tuple(str(c).strip() for c in cells[:6])


def allocations(folder: Path, rows: list[dict], kept: str = "") -> str:
  """Each compressed run's per-layer ranks, from its run folder's
  compression.json, as one table; a run whose folder is gone (they are
  not committed) keeps its line from `kept`, the table written before."""
  old = {}
  for line in kept.splitlines()[2:]:
    cells = line.strip().strip("|").split("|")
    old[_allocation_key(cells)] = line
  lines = [ALLOCATION_HEADER]
  for row in rows:
    if row["factorization"] == "dense":
      continue
    allocation, budget = json.loads(row["rank"]).split()
    key = _allocation_key([row["seed"], row["factorization"], budget,
                           allocation, row["init"], row["epochs"]])
    path = folder / "runs" / f"{row['run']}-{row['key']}" / "compression.json"
    if not path.exists():
      if key in old:
        lines.append(old[key])
      continue
    layers = json.loads(path.read_text())["layers"]
    cells = [
        ("x".join(map(str, layer["rank"])) if isinstance(layer["rank"], list)
         else str(layer["rank"])) + (
            f" ({layer['error']:.2f})" if layer["error"] is not None else "")
        for layer in layers]
    lines.append("| " + " | ".join(key + tuple(cells)) + " |")
  return "\n".join(lines)


NAMES = {"tucker": "Tucker-2", "cp": "CP"}


def collect_data_aware(write: bool = False) -> dict:
  """{(factorization, budget, calibration examples): {"before": by seed,
  "after": by seed, "weights": [...]}} of the "data_aware" preset's
  finished runs (`write`: before_fine_tuning.csv brought up to date)."""
  results = {r["key"]: r for r in rundir.read_results(DATA_AWARE)
             if r["status"] == "ok"}
  before = report.collect_before_fine_tuning(DATA_AWARE, write)
  found = defaultdict(lambda: {"before": {}, "after": {}, "weights": []})
  for _, run in expand(compress_fashion_mnist.get_config("data_aware")):
    key = run_key(run)
    if not run.compress.factorization or key not in results:
      continue
    group = found[(run.compress.factorization, run.compress.budget,
                   setting(run, "compress.calibration_examples"))]
    group["after"][run.seed] = float(results[key]["test_accuracy"])
    group["weights"].append(int(results[key]["layer_params"]))
    if key in before:
      group["before"][run.seed] = before[key]["accuracy"]
  return found


def data_aware_table(write: bool = False) -> str:
  groups = collect_data_aware(write)
  lines = ["| budget | factorization | decomposed for | compressed convs' "
           "weights | test acc before fine-tuning, mean ± std (n) | after "
           f"{TUNE} epochs of it | data-aware minus plain, before, points "
           "[95%] | after, points [95%] |", "|---|---|---|---:|---|---|---|"
           "---|"]
  for factorization, budget, examples in sorted(
      groups, key=lambda g: (g[0] != "tucker", -g[1], g[2])):
    group = groups[(factorization, budget, examples)]
    plain = groups.get((factorization, budget, 0))
    gaps = ("", "") if examples == 0 or plain is None else (
        _gap(group["before"], plain["before"]),
        _gap(group["after"], plain["after"]))
    lines.append(
        f"| {budget} | {NAMES[factorization]} | "
        f"{f'outputs on {examples:,} images' if examples else 'weights'}"
        f" | {_weights(group['weights'])} | {_cell(group['before'])} | "
        f"{_cell(group['after'])} | {gaps[0]} | {gaps[1]} |")
  dense = [float(r["test_accuracy"]) for r in rundir.read_results(DATA_AWARE)
           if r["factorization"] == "dense" and r["status"] == "ok"]
  lines.append(f"\nTheir dense nets: {stats.mean_std_text(dense)}.")
  return "\n".join(lines)


def blocks(write: bool = False) -> dict[tuple[Path, str], str]:
  """The README blocks this script writes: (README, block name) -> text;
  the data-aware block once its folder's runs have begun."""
  found = {(FOLDER / "README.md", "compress"): table(
      rundir.read_results(FOLDER))}
  if (DATA_AWARE / "results.csv").exists():
    found[(FOLDER / "README.md", "data_aware")] = data_aware_table(write)
  return found


def main(folder: str = str(FOLDER)) -> None:
  folder = ROOT / folder if not Path(folder).is_absolute() else Path(folder)
  rows = rundir.read_results(folder)
  text = table(rows)
  plot(rows, folder / "comparison.png")
  path = folder / "allocations.md"
  kept = path.read_text().split("\n\n", 1)[1] if path.exists() else ""
  path.write_text(
      "# Ranks per layer of every compressed run (relative reconstruction "
      "error of the decomposition before fine-tuning)\n\n"
      f"{allocations(folder, rows, kept)}\n")
  if (folder / "README.md").exists():
    report.splice(folder / "README.md", "compress", text)
  print(text)
  if folder == FOLDER and (DATA_AWARE / "results.csv").exists():
    text = data_aware_table(write=True)
    report.splice(FOLDER / "README.md", "data_aware", text)
    print(f"\n{text}")


if __name__ == "__main__":
  main(*sys.argv[1:])
