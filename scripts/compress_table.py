"""The compression table: Tucker-2 compress + fine-tune (global and uniform
ranks) against the same architecture trained from scratch and the dense
net, and CP compress + fine-tune (global ranks) and its architecture from
scratch beside them, from
experiments/compress_fashion_mnist/results.csv, and its plot.

  python scripts/compress_table.py [experiments/compress_fashion_mnist]

For each budget and condition: the compressed convs' weights and their
compression, test accuracy over seeds (mean, sample std, n), and the gap in
points to the dense net, to the same factorization trained from scratch,
to uniform ranks and (for CP) to Tucker-2 in the same condition, paired by
seed (a
seed's runs share the dense teacher and the data order), with the 95%
Student-t interval of the mean gap. Written into the folder's README.md
between `<!-- compress:begin -->` and `<!-- compress:end -->`, as
comparison.png beside it, and printed; with the run folders present, each
compressed run's ranks into allocations.md.
"""

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from matplotlib.figure import Figure

from cpac_jax import report, rundir

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- compress:begin -->", "<!-- compress:end -->"
# (factorization, init, allocation)
TUCKER, UNIFORM, SCRATCH, CP, CP_SCRATCH = (
    ("tucker", "compressed", "global"), ("tucker", "compressed", "uniform"),
    ("tucker", "scratch", "global"), ("cp", "compressed", "global"),
    ("cp", "scratch", "global"))
CONDITIONS = (TUCKER, UNIFORM, SCRATCH, CP, CP_SCRATCH)
LABELS = {TUCKER: "Tucker-2 compress + fine-tune, global ranks",
          UNIFORM: "Tucker-2 compress + fine-tune, uniform ranks",
          SCRATCH: "Tucker-2 from scratch (global ranks' architecture)",
          CP: "CP compress + fine-tune, global ranks",
          CP_SCRATCH: "CP from scratch (CP global ranks' architecture)"}
# Each condition's from-scratch twin, and CP's Tucker-2 counterpart.
SCRATCH_OF = {TUCKER: SCRATCH, UNIFORM: SCRATCH, CP: CP_SCRATCH}
TUCKER_OF = {CP: TUCKER, CP_SCRATCH: SCRATCH}


def _gap(ours: dict, theirs: dict) -> str:
  """Paired gap in points, mean and 95% interval, over shared seeds."""
  seeds = sorted(set(ours) & set(theirs))
  gaps = [100 * (ours[s] - theirs[s]) for s in seeds]
  if not gaps:
    return "-"
  interval = report.interval95(gaps)
  text = f"{statistics.fmean(gaps):+.2f}"
  if interval:
    text += f" [{interval[0]:+.2f}, {interval[1]:+.2f}]"
  return text


def _cell(by_seed: dict) -> str:
  values = list(by_seed.values())
  std = statistics.stdev(values) if len(values) > 1 else 0.0
  return f"{statistics.fmean(values):.4f} ± {std:.4f} (n={len(values)})"


def collect(rows: list[dict]) -> tuple[dict, dict]:
  """(dense accuracy by seed, {(budget, factorization, init, allocation):
  {"acc": by seed, "weights", "compression"}})."""
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
                    allocation)]
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
      "vs scratch, points [95%] | vs uniform, points [95%] | "
      "vs Tucker-2, points [95%] |",
      "|---|---|---:|---:|---|---|---|---|---|",
      f"| 1 | dense | 138,240 | 1.0x | {_cell(dense)} | | | | |"]
  for budget in sorted({b for b, *_ in groups}, reverse=True):
    acc = {c: groups.get((budget, *c), {"acc": {}})["acc"]
           for c in CONDITIONS}
    for condition in CONDITIONS:
      group = groups.get((budget, *condition))
      if group is None:
        continue
      scratch = (_gap(group["acc"], acc[SCRATCH_OF[condition]])
                 if condition in SCRATCH_OF else "")
      uniform = (_gap(group["acc"], acc[UNIFORM]) if condition in (TUCKER, CP)
                 else "")
      tucker = (_gap(group["acc"], acc[TUCKER_OF[condition]])
                if condition in TUCKER_OF else "")
      lines.append(
          f"| {budget} | {LABELS[condition]} | {_weights(group['weights'])} "
          f"| {group['compression']:.1f}x | {_cell(group['acc'])} | "
          f"{_gap(group['acc'], dense)} | {scratch} | {uniform} | {tucker} |")
  return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
  dense, groups = collect(rows)
  fig = Figure(figsize=(6.4, 4.2))
  ax = fig.subplots()
  ax.axhline(100 * statistics.fmean(dense.values()), color="black", lw=1,
             ls="--", label=f"dense (mean of {len(dense)})")
  for offset, condition in zip((-0.06, -0.03, 0.0, 0.03, 0.06), CONDITIONS):
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
  ax.set_xlabel("compression of the four compressed convs (x)")
  ax.set_ylabel("test accuracy (%)")
  ax.set_title("CNN on Fashion-MNIST: compression (dots: seeds)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def allocations(folder: Path, rows: list[dict]) -> str:
  """Each compressed run's per-layer ranks, from its run folder's
  compression.json, as one table."""
  lines = ["| seed | factorization | budget | allocation | init | "
           + " | ".join(f"{p} rank (error)" for p in (
               "convs/1", "convs/2", "convs/3", "convs/4")) + " |",
           "|---|---|---|---|---|---|---|---|---|"]
  for row in rows:
    path = folder / "runs" / f"{row['run']}-{row['key']}" / "compression.json"
    if row["factorization"] == "dense" or not path.exists():
      continue
    report_ = json.loads(path.read_text())
    cells = [
        ("x".join(map(str, layer["rank"])) if isinstance(layer["rank"], list)
         else str(layer["rank"])) + (
            f" ({layer['error']:.2f})" if layer["error"] is not None else "")
        for layer in report_["layers"]]
    lines.append(f"| {row['seed']} | {row['factorization']} | "
                 f"{report_['budget']} | "
                 f"{report_['allocation']} | {row['init']} | "
                 + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(folder: str = "experiments/compress_fashion_mnist") -> None:
  folder = ROOT / folder if not Path(folder).is_absolute() else Path(folder)
  rows = rundir.read_results(folder)
  text = table(rows)
  plot(rows, folder / "comparison.png")
  if (folder / "runs").is_dir():  # run folders are not committed
    (folder / "allocations.md").write_text(
        "# Ranks per layer of every compressed run (relative reconstruction "
        "error of the decomposition before fine-tuning)\n\n"
        f"{allocations(folder, rows)}\n")
  readme = folder / "README.md"
  if readme.exists() and BEGIN in readme.read_text():
    head, rest = readme.read_text().split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
  print(text)


if __name__ == "__main__":
  main(*sys.argv[1:])
