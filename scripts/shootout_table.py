"""The decomposition shoot-out tables and plots, from a shoot-out folder's
results.csv: the TTL MLP's hidden layer as a Tucker tensor, a TT-matrix and
a low-rank dense product (experiments/shootout_ttl_mnist), the CPAC-CNN's
second conv (experiments/shootout_cpac_mnist) or the compression CNN's four
convs after the first (experiments/shootout_cnn_fashion_mnist) as CP,
Tucker and TT kernels, at matched budgets.

  python scripts/shootout_table.py [experiments/shootout_ttl_mnist]

For each budget (the fraction of the held layer's weights) and family: the
layer's weights, test accuracy over seeds (mean, sample std, n, the 95%
Student-t interval of the mean) and the gap in points to the dense net
paired by seed, with its 95% interval, and the time against the dense net:
the training step's, timed alone by `cpac_jax.benchmarks.shootout`
(experiments/benchmarks/shootout_steps.json), where it measured the net;
else the mean of the runs' train_seconds (compilation included) relative
to the dense net's, where every run trained alone; else "-"; the best
family of each budget by mean accuracy, and its lead over each other family
(the runner-up first) with the seed-paired interval of the lead. Written
into the folder's README.md between `<!-- shootout:begin -->` and
`<!-- shootout:end -->`, as accuracy_vs_weights.png beside it, and printed.
"""

import csv
import json
import math
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

from matplotlib.figure import Figure

from cpac_jax import report, stats

ROOT = Path(__file__).resolve().parents[1]
STEPS = ROOT / "experiments/benchmarks/shootout_steps.json"


class Net(NamedTuple):
  """What a shoot-out holds at a budget, and how its table names it."""

  layer: str                # the held layer, as the weights column names it
  dense: str                # the dense net's row label
  dense_weights: int        # the held layer's dense weights
  labels: dict              # family -> row label, in table order
  title: str                # the plot's


NETS = {
    "shootout_ttl_mnist": Net(
        "hidden-layer", "dense (nnx.Linear 784 -> 300)", 784 * 300,
        {"tucker": "Tucker (TuckerDense, (28, 28) -> (300,))",
         "tt": "TT-matrix (TTDense, (4, 7, 4, 7) -> (3, 4, 5, 5))",
         "low-rank dense": "low-rank dense (784 -> b -> 300)"},
        "TTL MLP on MNIST, hidden layer 784 -> 300 (dots: seeds)"),
    "shootout_cpac_mnist": Net(
        "second-conv", "dense (nnx.Conv 8 -> 8, 3x3)", 8 * 8 * 9,
        {"cp": "CP (CPConv)", "tucker": "Tucker-2 (TuckerConv)",
         "tt": "TT (TTConv)"},
        "CPAC-CNN on MNIST, second conv 8 -> 8 3x3 (dots: seeds)"),
    "shootout_cnn_fashion_mnist": Net(
        "conv", "dense (nnx.Conv, the four 3x3 convs after the first)",
        9 * (32 * 32 + 32 * 64 + 64 * 64 + 64 * 128),
        {"cp": "CP (CPConv)", "tucker": "Tucker-2 (TuckerConv)",
         "tt": "TT (TTConv)"},
        "CNN on Fashion-MNIST, four 3x3 convs from scratch (dots: seeds)"),
}
LOW_RANK_FRACTIONS = (0.5, 0.1, 0.03, 0.01)  # configs/shootout_ttl_mnist.py


def _family_budget(row: dict, net: Net):
  """(family, budget fraction, held-layer weights) of a row; budget None
  for the dense net."""
  if row["factorization"] != "dense":
    return (row["factorization"], float(json.loads(row["rank"])),
            int(row["layer_params"]))
  match = re.search(r"bottleneck=(\d+)", row["run"])
  if not match:
    return "dense", None, net.dense_weights
  b = int(match.group(1))
  return "low-rank dense", _low_rank_budget(b, net), 1084 * b


def _low_rank_budget(bottleneck: int, net: Net) -> float:
  """The budget whose low-rank product 784 -> b -> 300 (1,084 b weights)
  has this bottleneck."""
  return next(f for f in LOW_RANK_FRACTIONS
              if math.floor(f * net.dense_weights / 1084) == bottleneck)


def collect(rows: list[dict], net: Net):
  """(dense accuracy by seed, {(budget, family): {"acc": by seed,
  "weights": hidden-layer weights}})."""
  dense, groups = {}, defaultdict(lambda: {"acc": {}})
  dense_seconds = groups[(None, "dense")]["seconds"] = []
  for row in rows:
    if row["status"] != "ok":
      continue
    family, budget, weights = _family_budget(row, net)
    accuracy = float(row["test_accuracy"])
    if family == "dense":
      dense[int(row["seed"])] = accuracy
      dense_seconds.append(float(row["train_seconds"]))
      continue
    groups[(budget, family)]["acc"][int(row["seed"])] = accuracy
    groups[(budget, family)]["weights"] = weights
    groups[(budget, family)].setdefault("seconds", []).append(
        float(row["train_seconds"]))
  return dense, groups


def _interval(values: list[float], points: bool = False) -> str:
  """The 95% interval of the mean: accuracies to 4 places, points to 2."""
  interval = stats.interval95(values)
  if not interval:
    return "-"
  low, high = interval
  return f"[{low:+.2f}, {high:+.2f}]" if points else f"[{low:.4f}, {high:.4f}]"


def step_ratios(config: str, net: Net) -> dict:
  """{(family, budget): (step time / the dense net's as trained, / the
  fastest dense net's)} of `config`'s runs in the shoot-out step
  benchmark's record (`cpac_jax.benchmarks.shootout`; {} where it has
  none)."""
  if not STEPS.exists():
    return {}
  ratios = {}
  for r in json.loads(STEPS.read_text())["rows"]:
    if r["net"] != config:
      continue
    if r["family"] == "low-rank dense":
      budget = _low_rank_budget(int(r["budget"].split()[-1]), net)
    elif r["family"] == "dense":
      if r["budget"] != "dense":
        continue                          # a dense baseline, not a run
      budget = None                       # as collect() keys the dense net
    else:
      budget = float(r["budget"])
    ratios[(r["family"], budget)] = (r["vs_dense"], r["vs_fastest_dense"])
  return ratios


def table(rows: list[dict], net: Net, steps: dict | None = None) -> str:
  """The README block; `steps` (`step_ratios`, if any) fills the time
  column."""
  dense, groups = collect(rows, net)
  values = list(dense.values())
  dense_seconds = statistics.fmean(groups.pop((None, "dense"))["seconds"])
  alone = all(row.get("trained", "alone") == "alone" for row in rows)

  faster_dense = any(ratio != fastest
                     for ratio, fastest in (steps or {}).values())

  def time_cell(seconds: list[float], key) -> str:
    if steps:
      if key not in steps:
        return "-"
      ratio, fastest = steps[key]
      return f"{ratio:.2f}x" + (f"; {fastest:.2f}x" if faster_dense else "")
    if alone:
      return f"{statistics.fmean(seconds) / dense_seconds:.2f}x"
    return "-"

  lines = [
      f"| budget | family | {net.layer} weights | compression | test "
      "accuracy, mean ± std (n) | 95% interval | vs dense, points [95%] | "
      + ("step time vs dense; vs the fastest dense (shootout_steps.md) |"
         if faster_dense else "step time vs dense (shootout_steps.md) |"
         if steps else "training time vs dense |"),
      "|---|---|---:|---:|---|---|---|---:|",
      f"| 1 | {net.dense} | {net.dense_weights:,} | 1.0x | "
      f"{stats.mean_std_text(values)} | {_interval(values)} | | "
      f"{time_cell([dense_seconds], ('dense', None))} |"]
  winners = []
  for budget in sorted({b for b, _ in groups}, reverse=True):
    present = [f for f in net.labels if (budget, f) in groups]
    for family in present:
      group = groups[(budget, family)]
      acc = list(group["acc"].values())
      gaps = stats.paired_gaps(group["acc"], dense)
      lines.append(
          f"| {budget} | {net.labels[family]} | {group['weights']:,} | "
          f"{net.dense_weights / group['weights']:.1f}x | "
          f"{stats.mean_std_text(acc)} | {_interval(acc)} | "
          f"{stats.gap_text(gaps)} | "
          f"{time_cell(group['seconds'], (family, budget))} |")
    ranked = sorted(present, key=lambda f: -statistics.fmean(
        groups[(budget, f)]["acc"].values()))
    best, short = ranked[0], net.labels[ranked[0]].split(" (")[0]
    for other in ranked[1:]:  # the runner-up first
      lead = stats.paired_gaps(groups[(budget, best)]["acc"],
                               groups[(budget, other)]["acc"])
      interval = stats.interval95(lead)
      clear = interval is not None and interval[0] > 0
      winners.append(
          (f"- budget {budget}: **{short}** leads " if other == ranked[1]
           else "  - and ")
          + f"{net.labels[other].split(' (')[0]} by "
          f"{statistics.fmean(lead):+.2f} points, seed-paired 95% interval "
          f"{_interval(lead, True)}" + ("" if clear else
                                  " (the interval includes 0: not resolved)"))
  return "\n".join(lines + ["", "Best family per budget:", "", *winners])


def plot(rows: list[dict], net: Net, path: Path) -> None:
  dense, groups = collect(rows, net)
  groups.pop((None, "dense"))
  fig = Figure(figsize=(6.4, 4.2))
  ax = fig.subplots()
  ax.axhline(100 * statistics.fmean(dense.values()), color="black", lw=1,
             ls="--", label=f"dense, {net.dense_weights:,} weights")
  for family, label in net.labels.items():
    points = sorted((g["weights"], g["acc"]) for (_, f), g in groups.items()
                    if f == family)
    if not points:
      continue
    means = [100 * statistics.fmean(acc.values()) for _, acc in points]
    line, = ax.plot([w for w, _ in points], means, marker="o",
                    label=label)
    for weights, acc in points:
      ax.scatter([weights] * len(acc), [100 * a for a in acc.values()], s=8,
                 color=line.get_color(), alpha=0.5)
  ax.set_xscale("log")
  ax.set_xlabel(f"{net.layer} weights")
  ax.set_ylabel("test accuracy (%)")
  ax.set_title(net.title)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def _table_of(folder: Path) -> tuple[list[dict], str]:
  """A shoot-out folder's rows and its table."""
  if folder.name not in NETS:
    raise ValueError(f"{folder} is not a shoot-out folder; its name must be "
                     f"one of {tuple(NETS)}")
  net = NETS[folder.name]
  with open(folder / "results.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  return rows, table(rows, net, step_ratios(f"configs/{folder.name}.py", net))


def blocks() -> dict[tuple[Path, str], str]:
  """The README blocks this script writes: (README, block name) -> text."""
  folders = [ROOT / "experiments" / name for name in NETS]
  return {(folder / "README.md", "shootout"): _table_of(folder)[1]
          for folder in folders}


def main(folder: Path) -> None:
  rows, text = _table_of(folder)
  plot(rows, NETS[folder.name], folder / "accuracy_vs_weights.png")
  report.splice(folder / "README.md", "shootout", text)
  print(text)


if __name__ == "__main__":
  main(Path(sys.argv[1]) if len(sys.argv) > 1
       else ROOT / "experiments/shootout_ttl_mnist")
