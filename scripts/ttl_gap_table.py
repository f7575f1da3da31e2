"""The TTL-gap table: each option of configs/ttl_gap_<dataset>.py against
the dense twin, from the committed results of both stages.

  python scripts/ttl_gap_table.py [mnist fashion_mnist]

For each option: the learning rate stage 1 chose and the validation
accuracy it had there; stage 2's test accuracy over seeds (mean, sample
std, n); and its gap to the dense twin in points, paired by seed (the same
seed draws the same data order), with the 95% Student-t interval of the
mean gap. Written into experiments/ttl_gap_<dataset>/README.md between
`<!-- gap:begin -->` and `<!-- gap:end -->`, and printed.
"""

import sys
from pathlib import Path

from flax import nnx

from configs import ttl_gap_mnist as gap
from cpac_jax import report, rundir, stats
from cpac_jax.config import build_model

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("mnist", "fashion_mnist")


def _layer_weights(run) -> int:
  """Weights (biases left out, as the paper counts) of the 784 -> 300
  layer (and its bottleneck, if any) of `run`."""
  model = nnx.eval_shape(lambda: build_model(run))
  layers = [model.hidden] + [model.bottleneck] * (model.bottleneck
                                                   is not None)
  return sum(leaf.size for layer in layers
             for path, leaf in nnx.to_flat_state(nnx.state(layer, nnx.Param))
             if path[-1] != "bias")


def table(dataset: str) -> str:
  workdir = ROOT / "experiments" / f"ttl_gap_{dataset}"
  select, test = gap.build(dataset, "select"), gap.build(dataset)
  rates = gap.CHOSEN_RATES[dataset]
  validation = {r["key"]: r for r in rundir.read_results(workdir / "select")}
  results = {r["key"]: r for r in rundir.read_results(workdir)
             if r.get("status") == "ok"}

  def rows_of(option: str, config, teacher_rate, seeds) -> list[dict]:
    fields = gap.OPTIONS[option]
    return [results.get(gap.one_run_key(config, gap.sweep_group(
        fields, rates[option], teacher_rate, [seed]))) for seed in seeds]

  twin = {int(r["seed"]): float(r["test_accuracy"])
          for r in rows_of("dense twin", test, rates["dense twin"], [0, 1, 2])
          if r}
  lines = ["| option | ranks | weights of the 784->300 layer | compression "
           "of that layer | learning rate (chosen) | validation acc (stage "
           "1) | test acc: mean ± std (n) | gap to the dense twin, points: "
           "mean [95% interval], paired by seed |", "|" + "---|" * 8]
  for option, fields in gap.OPTIONS.items():
    found = [r for r in rows_of(option, test, rates["dense twin"], [0, 1, 2])
             if r]
    chosen = validation[gap.one_run_key(select, gap.sweep_group(
        fields, rates[option], gap.SELECT_TEACHER_RATE, [0]))]
    if not found:
      lines.append(f"| {option} | | | | {rates[option]:g} | "
                   f"{float(chosen['test_accuracy']):.4f} | not run yet | |")
      continue
    accuracies = [float(r["test_accuracy"]) for r in found]
    mean, std = stats.mean_std(accuracies)
    first = found[0]
    layer = _layer_weights(gap.one_run(test, gap.sweep_group(
        fields, rates[option], rates["dense twin"], [0])))
    gaps = stats.paired_gaps(
        {int(r["seed"]): float(r["test_accuracy"]) for r in found}, twin)
    gap_cell = ("-" if option == "dense twin" or len(gaps) < 2
                else stats.gap_text(gaps))
    lines.append(
        f"| {option} | {first['rank'] or '-'} | {layer:,} | "
        f"{784 * 300 / layer:.2f}x | {rates[option]:g} | "
        f"{float(chosen['test_accuracy']):.4f} | {mean:.4f} ± {std:.4f} "
        f"({len(found)}) | {gap_cell} |")
  for stage, folder in (("stage 1", workdir / "select"), ("stage 2",
                                                          workdir)):
    rows = rundir.read_results(folder)
    seconds = sum(float(r["train_seconds"]) for r in rows
                  if r.get("train_seconds"))
    lines.append(f"\n{stage}: {len(rows)} runs in `{folder.relative_to(ROOT)}"
                 f"/results.csv`, {seconds:,.0f} s of training time in all "
                 "(their train_seconds).")
  return "\n".join(lines)


def _readme(dataset: str) -> Path:
  return ROOT / "experiments" / f"ttl_gap_{dataset}" / "README.md"


def blocks() -> dict[tuple[Path, str], str]:
  """The README blocks this script writes: (README, block name) -> text."""
  return {(_readme(dataset), "gap"): table(dataset) for dataset in DATASETS}


def main(datasets: list[str]) -> None:
  for dataset in datasets or DATASETS:
    text = table(dataset)
    print(f"# {dataset}\n{text}\n")
    report.splice(_readme(dataset), "gap", text)


if __name__ == "__main__":
  main(sys.argv[1:])
