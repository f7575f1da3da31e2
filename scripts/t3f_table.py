"""The t3f anchor's table: configs/compress_t3f_mnist.py's runs beside the
t3f tutorial's published single run.

  python scripts/t3f_table.py [--check]

For the dense MLP, its 784x625 layer as a TT-matrix of rank 16 and as the
low-rank "svd" of the same weights, each plain and data-aware (on 1,024
training images): test accuracy before fine-tuning (the compressed run's
compression.json, kept in before_fine_tuning.csv) and after it, over seeds
(mean ± sample std, n, the 95% Student-t interval of the mean), where
t3f's single run falls among our seeds (the share of ours below it), and
gaps paired by seed (a seed's runs share the dense teacher). Written into
experiments/compress_t3f_mnist/README.md between `<!-- t3f:begin -->` and
`<!-- t3f:end -->`, and printed; `--check` writes nothing and fails if the
block is stale.
"""

import sys
from pathlib import Path

from configs import compress_t3f_mnist as t3f
from cpac_jax import report, rundir, stats
from cpac_jax.config import expand, run_key, setting

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "experiments" / "compress_t3f_mnist"
LAYER = 784 * 625
AWARE = t3f.CALIBRATION_EXAMPLES
# Data-aware runs whose factors were left as the whitening mapped them
# back, kept for the comparison (unbalanced/results.csv): the same weight
# as the data-aware row above them, so the same accuracy before
# fine-tuning. svd's (commit 61f69e8) had the scale on one side, fixed by
# `cpac_jax.compression._balance`; TT's cores were not orthonormal, fixed
# by `_left_orthonormalize`.
UNBALANCED = {f: (f"{f}-unbalanced", AWARE) for f in ("tt", "svd")}
LABELS = {
    ("dense", 0): "dense MLP (t3f: 0.9714)",
    ("tt", 0): "TT-matrix, rank 16 (t3f: 0.6443 before, 0.9765 after)",
    ("tt", AWARE): f"TT-matrix, rank 16, data-aware ({AWARE:,} images)",
    UNBALANCED["tt"]: "TT-matrix, data-aware, cores as mapped back (before "
                      "the fix)",
    ("svd", 0): "low-rank svd, plain",
    ("svd", AWARE): f"low-rank svd, data-aware ({AWARE:,} images)",
    UNBALANCED["svd"]: "low-rank svd, data-aware, factors as split before "
                       "the fix (commit 61f69e8)"}
PUBLISHED = {("dense", 0): (None, t3f.T3F["dense"]),
             ("tt", 0): (t3f.T3F["tt_before"], t3f.T3F["tt_after"])}


def _method(run) -> tuple[str, int]:
  factorization = run.compress.factorization or "dense"
  return factorization, setting(run, "compress.calibration_examples")


def collect(write: bool = False) -> tuple[dict, dict]:
  """{method: {seed: test accuracy}} after training, and before
  fine-tuning, of the finished runs (`write`: before_fine_tuning.csv
  brought up to date from the run folders)."""
  results = {r["key"]: r for r in rundir.read_results(FOLDER)
             if r.get("status") == "ok"}
  before = report.collect_before_fine_tuning(FOLDER, write)
  unbalanced = {r["key"]: r for r in rundir.read_results(
      FOLDER / "unbalanced")}
  after, first = {}, {}
  for _, run in expand(t3f.get_config()):
    key, method = run_key(run), _method(run)
    if key in results:
      after.setdefault(method, {})[run.seed] = float(
          results[key]["test_accuracy"])
    if key in unbalanced:
      after.setdefault(UNBALANCED[method[0]], {})[run.seed] = float(
          unbalanced[key]["test_accuracy"])
    if key in before:
      first.setdefault(method, {})[run.seed] = before[key]["accuracy"]
  return after, first


def _cell(by_seed: dict, published: float | None) -> str:
  values = [by_seed[s] for s in sorted(by_seed)]
  if not values:
    return "-"
  text = stats.mean_std_interval_text(values)
  if published is not None:
    text += f"; t3f at {stats.percentile(values, published):.0f}%"
  return text


def table(write: bool = False) -> str:
  after, before = collect(write)
  lines = ["| method | weights of the 784x625 layer | compression | test acc "
           "before fine-tuning: mean ± std (n) [95% interval]; t3f's run "
           "among ours | test acc after: mean ± std (n) [95% interval]; "
           "t3f's run among ours |", "|---|---:|---:|---|---|"]
  for method, label in LABELS.items():
    weights = LAYER if method[0] == "dense" else t3f.TT_RANK16_WEIGHTS
    published_before, published_after = PUBLISHED.get(method, (None, None))
    first = ("-" if method[0] == "dense" else "as above"
             if method in UNBALANCED.values()
             else _cell(before.get(method, {}), published_before))
    lines.append(
        f"| {label} | {weights:,} | {LAYER / weights:.1f}x | {first} | "
        f"{_cell(after.get(method, {}), published_after)} |")
  dense = after.get(("dense", 0), {})
  gaps = [("TT after fine-tuning minus the dense net", after.get(("tt", 0),
                                                                {}), dense),
          ("svd after fine-tuning minus the dense net",
           after.get(("svd", 0), {}), dense),
          ("data-aware minus plain svd, before fine-tuning",
           before.get(("svd", AWARE), {}),
           before.get(("svd", 0), {})),
          ("data-aware minus plain svd, after fine-tuning",
           after.get(("svd", AWARE), {}),
           after.get(("svd", 0), {})),
          ("data-aware, factors split before the fix, minus plain svd, "
           "after fine-tuning", after.get(UNBALANCED["svd"], {}),
           after.get(("svd", 0), {})),
          ("data-aware svd: the fix's split minus the split before it, "
           "after fine-tuning",
           after.get(("svd", AWARE), {}),
           after.get(UNBALANCED["svd"], {})),
          ("data-aware minus plain TT, before fine-tuning",
           before.get(("tt", AWARE), {}),
           before.get(("tt", 0), {})),
          ("data-aware minus plain TT, after fine-tuning",
           after.get(("tt", AWARE), {}),
           after.get(("tt", 0), {})),
          ("TT minus plain svd, before fine-tuning",
           before.get(("tt", 0), {}), before.get(("svd", 0), {})),
          ("TT minus plain svd, after fine-tuning", after.get(("tt", 0), {}),
           after.get(("svd", 0), {}))]
  lines += ["", "| paired by seed | points: mean [95% interval] | seeds |",
            "|---|---|---:|"]
  for label, ours, theirs in gaps:
    paired = stats.paired_gaps(ours, theirs)
    lines.append(f"| {label} | {stats.gap_text(paired)} | {len(paired)} |")
  rows = rundir.read_results(FOLDER)
  old = rundir.read_results(FOLDER / "unbalanced")
  seconds = sum(float(r["train_seconds"]) for r in rows + old
                if r.get("train_seconds"))
  lines.append(f"\n{len(rows)} runs in `experiments/compress_t3f_mnist/"
               f"results.csv` and {len(old)} in `unbalanced/results.csv`, "
               f"{seconds:,.0f} s of training in all (their train_seconds); "
               "accuracies before fine-tuning from "
               f"`{report.BEFORE_FINE_TUNING}`.")
  return "\n".join(lines)


def blocks(write: bool = False) -> dict[tuple[Path, str], str]:
  """The README block this script writes: (README, block name) -> text
  (`write`: as `collect`)."""
  return {(FOLDER / "README.md", "t3f"): table(write)}


if __name__ == "__main__":
  found = blocks(write="--check" not in sys.argv)
  print(*found.values())
  sys.exit(report.write_blocks(found, sys.argv[1:],
                               "python scripts/t3f_table.py"))
