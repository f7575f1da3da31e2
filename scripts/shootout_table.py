"""The decomposition shoot-out table and plot: the TTL MLP's hidden layer
as a Tucker tensor, a TT-matrix and a low-rank dense product at matched
budgets, from experiments/shootout_ttl_mnist/results.csv.

  python scripts/shootout_table.py [experiments/shootout_ttl_mnist]

For each budget (the fraction of the hidden layer's 235,200 weights) and
family: the hidden layer's weights, test accuracy over seeds (mean, sample
std, n, the 95% Student-t interval of the mean) and the gap in points to
the dense net paired by seed, with its 95% interval, and the mean of the
runs' train_seconds (20 epochs, compilation included) relative to the
dense net's in the same sweep; the best family of
each budget by mean accuracy, and whether its lead over the runner-up is
outside the runner-up's seed-paired interval. Written into the folder's
README.md between `<!-- shootout:begin -->` and `<!-- shootout:end -->`,
as accuracy_vs_weights.png beside it, and printed.
"""

import csv
import json
import math
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from matplotlib.figure import Figure

from cpac_jax import report

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- shootout:begin -->", "<!-- shootout:end -->"
DENSE_WEIGHTS = 784 * 300
FRACTIONS = (0.5, 0.1, 0.03, 0.01)
FAMILIES = ("tucker", "tt", "low-rank dense")
LABELS = {"tucker": "Tucker (TuckerDense, (28, 28) -> (300,))",
          "tt": "TT-matrix (TTDense, (4, 7, 4, 7) -> (3, 4, 5, 5))",
          "low-rank dense": "low-rank dense (784 -> b -> 300)"}


def _family_budget(row: dict):
  """(family, budget fraction, hidden-layer weights) of a row; budget None
  for the dense net."""
  if row["factorization"] in ("tucker", "tt"):
    return (row["factorization"], float(json.loads(row["rank"])),
            int(row["layer_params"]))
  match = re.search(r"bottleneck=(\d+)", row["run"])
  if not match:
    return "dense", None, DENSE_WEIGHTS
  b = int(match.group(1))
  budget = next(f for f in FRACTIONS
                if math.floor(f * DENSE_WEIGHTS / 1084) == b)
  return "low-rank dense", budget, 1084 * b


def collect(rows: list[dict]):
  """(dense accuracy by seed, {(budget, family): {"acc": by seed,
  "weights": hidden-layer weights}})."""
  dense, groups = {}, defaultdict(lambda: {"acc": {}})
  dense_seconds = groups[(None, "dense")]["seconds"] = []
  for row in rows:
    if row["status"] != "ok":
      continue
    family, budget, weights = _family_budget(row)
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
  interval = report.interval95(values)
  if not interval:
    return "-"
  low, high = interval
  return f"[{low:+.2f}, {high:+.2f}]" if points else f"[{low:.4f}, {high:.4f}]"


def _gaps(ours: dict, theirs: dict) -> list[float]:
  return [100 * (ours[s] - theirs[s]) for s in sorted(set(ours) & set(theirs))]


def table(rows: list[dict]) -> str:
  dense, groups = collect(rows)
  values = list(dense.values())
  dense_seconds = statistics.fmean(groups.pop((None, "dense"))["seconds"])
  lines = [
      "| budget | family | hidden-layer weights | compression | test "
      "accuracy, mean ± std (n) | 95% interval | vs dense, points [95%] | "
      "training time vs dense |",
      "|---|---|---:|---:|---|---|---|---:|",
      f"| 1 | dense (nnx.Linear 784 -> 300) | {DENSE_WEIGHTS:,} | 1.0x | "
      f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f} "
      f"(n={len(values)}) | {_interval(values)} | | 1.00x |"]
  winners = []
  for budget in sorted({b for b, _ in groups}, reverse=True):
    present = [f for f in FAMILIES if (budget, f) in groups]
    for family in present:
      group = groups[(budget, family)]
      acc = list(group["acc"].values())
      gaps = _gaps(group["acc"], dense)
      gap = (f"{statistics.fmean(gaps):+.2f} {_interval(gaps, True)}" if gaps
             else "-")
      lines.append(
          f"| {budget} | {LABELS[family]} | {group['weights']:,} | "
          f"{DENSE_WEIGHTS / group['weights']:.1f}x | "
          f"{statistics.fmean(acc):.4f} ± "
          f"{statistics.stdev(acc) if len(acc) > 1 else 0:.4f} "
          f"(n={len(acc)}) | {_interval(acc)} | {gap} | "
          f"{statistics.fmean(group['seconds']) / dense_seconds:.2f}x |")
    ranked = sorted(present, key=lambda f: -statistics.fmean(
        groups[(budget, f)]["acc"].values()))
    if len(ranked) > 1:
      best, second = ranked[:2]
      lead = _gaps(groups[(budget, best)]["acc"],
                   groups[(budget, second)]["acc"])
      interval = report.interval95(lead)
      clear = interval is not None and interval[0] > 0
      winners.append(
          f"- budget {budget}: **{LABELS[best].split(' (')[0]}** leads "
          f"{LABELS[second].split(' (')[0]} by "
          f"{statistics.fmean(lead):+.2f} points, seed-paired 95% interval "
          f"{_interval(lead, True)}" + ("" if clear else
                                  " (the interval includes 0: a tie)"))
  return "\n".join(lines + ["", "Best family per budget:", "", *winners])


def plot(rows: list[dict], path: Path) -> None:
  dense, groups = collect(rows)
  groups.pop((None, "dense"))
  fig = Figure(figsize=(6.4, 4.2))
  ax = fig.subplots()
  ax.axhline(100 * statistics.fmean(dense.values()), color="black", lw=1,
             ls="--", label=f"dense, {DENSE_WEIGHTS:,} weights")
  for family in FAMILIES:
    points = sorted((g["weights"], g["acc"]) for (_, f), g in groups.items()
                    if f == family)
    if not points:
      continue
    means = [100 * statistics.fmean(acc.values()) for _, acc in points]
    line, = ax.plot([w for w, _ in points], means, marker="o",
                    label=LABELS[family])
    for weights, acc in points:
      ax.scatter([weights] * len(acc), [100 * a for a in acc.values()], s=8,
                 color=line.get_color(), alpha=0.5)
  ax.set_xscale("log")
  ax.set_xlabel("hidden-layer weights")
  ax.set_ylabel("test accuracy (%)")
  ax.set_title("TTL MLP on MNIST, hidden layer 784 -> 300 (dots: seeds)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(folder: Path) -> None:
  with open(folder / "results.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  text = table(rows)
  plot(rows, folder / "accuracy_vs_weights.png")
  readme = folder / "README.md"
  old = readme.read_text()
  if BEGIN not in old or END not in old:
    raise ValueError(f"{readme} has no {BEGIN} ... {END} block to fill")
  head, rest = old.split(BEGIN, 1)
  _, tail = rest.split(END, 1)
  readme.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
  print(text)


if __name__ == "__main__":
  main(Path(sys.argv[1]) if len(sys.argv) > 1
       else ROOT / "experiments/shootout_ttl_mnist")
