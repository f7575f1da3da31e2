"""The ViT study's table and plot: configs/compress_vit_fashion_mnist.py's
runs, from experiments/compress_vit_fashion_mnist.

  python scripts/vit_table.py [--check]

For each factorization, budget, allocation and decomposition (of the
weights, or data-aware: for the layers' outputs on the calibration
images), test accuracy before fine-tuning (the run's compression.json,
kept in before_fine_tuning.csv) and after it, over seeds (mean ± sample
std, n, the 95% Student-t interval of the mean), and the same
architecture trained from scratch; gaps paired by seed (a seed's runs
share the dense teacher): data-aware minus plain (before and after
fine-tuning), global minus uniform allocation, fine-tuned minus scratch.
Written into the folder's README.md between `<!-- vit:begin -->` and
`<!-- vit:end -->` and printed, and accuracy against the weights kept as
accuracy_vs_weights.png; `--check` writes nothing and fails if the block
is stale.
"""

import statistics
import sys
from collections import defaultdict
from pathlib import Path

from configs import compress_vit_fashion_mnist as vit
from cpac_jax import report, rundir, stats
from cpac_jax.config import expand, run_key, setting

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "experiments" / "compress_vit_fashion_mnist"
NAMES = {"svd": "low-rank svd", "tucker": "Tucker", "tt": "TT-matrix"}


def _method(run) -> tuple:
  """(factorization, budget, allocation, calibration examples, init) of a
  compressed run; ("dense",) of the teacher."""
  block = run.compress
  if not block.factorization:
    return ("dense",)
  return (block.factorization, float(block.budget), block.allocation,
          setting(run, "compress.calibration_examples"), block.init)


def collect(folder: Path = FOLDER, preset: str = "", write: bool = False
            ) -> dict:
  """{method: {"after": {seed: accuracy}, "before": {...}, "weights": [...],
  "dense_weights": [...]}} of `preset`'s finished runs in `folder`
  (`write`: before_fine_tuning.csv brought up to date)."""
  results = {r["key"]: r for r in rundir.read_results(folder)
             if r["status"] == "ok"}
  before = report.collect_before_fine_tuning(folder, write)
  found = defaultdict(lambda: {"after": {}, "before": {}, "weights": [],
                               "dense_weights": []})
  for _, run in expand(vit.get_config(preset)):
    key = run_key(run)
    if key not in results:
      continue
    row, group = results[key], found[_method(run)]
    group["after"][run.seed] = float(row["test_accuracy"])
    if key in before:
      group["before"][run.seed] = before[key]["accuracy"]
    if row["layer_params"] not in ("", "0"):
      group["weights"].append(int(row["layer_params"]))
      group["dense_weights"].append(
          round(int(row["layer_params"]) * float(row["layer_compression"])))
  return found


def _cell(by_seed: dict) -> str:
  return stats.mean_std_interval_text([by_seed[s] for s in sorted(by_seed)])


def _gap(ours: dict | None, theirs: dict | None) -> str:
  if not ours or not theirs:
    return ""
  return stats.gap_text(stats.paired_gaps(ours, theirs))


def _kept(group: dict) -> str:
  low, high = min(group["weights"]), max(group["weights"])
  share = statistics.fmean(w / d for w, d in zip(group["weights"],
                                                  group["dense_weights"]))
  counts = f"{low:,}" if low == high else f"{low:,}-{high:,}"
  return f"{counts} ({share:.3f})"


def table(folder: Path = FOLDER, preset: str = "", write: bool = False
          ) -> str:
  found = collect(folder, preset, write)
  lines = ["| factorization | budget | allocation | decomposed for | "
           "weights kept (share) | test acc before fine-tuning: mean ± std "
           "(n) [95%] | after | data-aware minus plain, before, points "
           "[95%] | after | global minus uniform, after | fine-tuned minus "
           "scratch, after |", "|---|---:|---|---|---:|---|---|---|---|---|"
           "---|"]
  dense = found.get(("dense",))
  for method in sorted((m for m in found if m[0] != "dense"),
                       key=lambda m: (m[0], -m[1], m[4], m[2], m[3])):
    factorization, budget, allocation, examples, init = method
    group = found[method]
    if init == "random":
      lines.append(
          f"| {NAMES[factorization]} | {budget} | from scratch, "
          f"{vit.DENSE_EPOCHS + vit.TUNE_EPOCHS} epochs (global ranks) | - | "
          f"{_kept(group)} | - | {_cell(group['after'])} | | | | |")
      continue
    plain = found.get((factorization, budget, allocation, 0, init), {})
    uniform = found.get((factorization, budget, "uniform", examples, init),
                        {})
    scratch = found.get((factorization, budget, "global", 0, "random"), {})
    aware = examples > 0
    lines.append(
        f"| {NAMES[factorization]} | {budget} | {allocation} | "
        f"{f'outputs on {examples:,} images' if aware else 'weights'} | "
        f"{_kept(group)} | {_cell(group['before'])} | "
        f"{_cell(group['after'])} | "
        f"{_gap(group['before'], plain.get('before')) if aware else ''} | "
        f"{_gap(group['after'], plain.get('after')) if aware else ''} | "
        f"{_gap(group['after'], uniform.get('after')) if allocation == 'global' else ''} | "
        f"{_gap(group['after'], scratch.get('after'))} |")
  rows = rundir.read_results(folder)
  seconds = sum(float(r["train_seconds"]) for r in rows
                if r.get("train_seconds"))
  lines.append(
      f"\nThe dense ViT: {_cell(dense['after']) if dense else '-'}. "
      f"{len(rows)} runs in `results.csv`, {seconds:,.0f} s of training "
      f"(their train_seconds); accuracies before fine-tuning from "
      f"`{report.BEFORE_FINE_TUNING}`.")
  return "\n".join(lines)


def plot(path: Path, folder: Path = FOLDER, preset: str = "") -> None:
  """Test accuracy after fine-tuning (or training from scratch) against
  the share of the compressed layers' weights kept, per method: the mean
  over seeds, each seed a dot."""
  found = collect(folder, preset)
  fig = report._figure()  # pylint: disable=protected-access
  ax = fig.subplots()
  dense = found.get(("dense",))
  if dense:
    ax.axhline(100 * statistics.fmean(dense["after"].values()),
               color="black", lw=1, ls="--",
               label=f"dense (mean of {len(dense['after'])})")
  lines = defaultdict(list)
  for method, group in found.items():
    if method[0] != "dense":
      factorization, _, allocation, examples, init = method
      label = NAMES[factorization] + (
          ", from scratch" if init == "random" else
          f", {allocation}{', data-aware' if examples else ''}")
      share = statistics.fmean(w / d for w, d in zip(group["weights"],
                                                      group["dense_weights"]))
      lines[label].append((share, group["after"]))
  for label, points in sorted(lines.items()):
    points.sort(key=lambda p: p[0])
    line, = ax.plot([x for x, _ in points],
                    [100 * statistics.fmean(a.values()) for _, a in points],
                    marker="o", label=label)
    for x, accuracy in points:
      ax.scatter([x] * len(accuracy), [100 * a for a in accuracy.values()],
                 s=8, color=line.get_color(), alpha=0.5)
  ax.set_xscale("log")
  ax.set_xlabel("share of the attention and MLP weights kept")
  ax.set_ylabel("test accuracy after fine-tuning (%)")
  ax.set_title("ViT on Fashion-MNIST, compressed (dots: seeds)")
  ax.legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def blocks(write: bool = False) -> dict[tuple[Path, str], str]:
  """The README block this script writes: (README, block name) -> text,
  once the study's runs have begun."""
  if not (FOLDER / "results.csv").exists():
    return {}
  return {(FOLDER / "README.md", "vit"): table(write=write)}


if __name__ == "__main__":
  found = blocks(write="--check" not in sys.argv)
  print(*found.values())
  if found and "--check" not in sys.argv:
    plot(FOLDER / "accuracy_vs_weights.png")
  sys.exit(report.write_blocks(found, sys.argv[1:],
                               "python scripts/vit_table.py"))
