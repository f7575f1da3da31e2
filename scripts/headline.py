"""The top README's Results table: each experiment's headline against the
paper's claim, generated from the committed files.

  python scripts/headline.py          # write the block into README.md
  python scripts/headline.py --check  # exit 1 if it is stale

One row per experiment folder: the paper's claim it tests (from the
papers' numbers in the configs), our headline figure with its n, and the
link. The figures come from the same files, and where a folder's own
table script computes them (the TTL gaps, the compression gaps) from
that script's table, so the two cannot disagree.
"""

import importlib.util
import json
import statistics
import sys
from pathlib import Path

from configs import cpac_mnist
from cpac_jax import report, rundir

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"


def _script(name: str):
  spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" /
                                                f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _row(table: str, **match: str) -> dict[str, str]:
  """The row of markdown `table` whose cells under the given headers are
  the given values, as {header: cell}; a ValueError unless exactly one."""
  lines = [[c.strip() for c in line.strip().strip("|").split("|")]
           for line in table.splitlines() if line.startswith("|")]
  head, rows = lines[0], [dict(zip(lines[0], cells)) for cells in lines[2:]]
  found = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
  if len(found) != 1:
    raise ValueError(f"{len(found)} rows match {match} in the table with "
                     f"headers {head}")
  return found[0]


def _link(folder: str) -> str:
  return f"[{folder}](experiments/{folder}/README.md)"


def _cpac(folder: str, key: tuple[str, int]) -> tuple[str, str]:
  """Paper's claim and our headline for a CPAC table."""
  paper = cpac_mnist.PAPER[key]
  rows = [r for r in rundir.read_results(EXPERIMENTS / folder)
          if r.get("init") == "official" and r["status"] == "ok"]
  summary = report.summarize(rows)
  ranks = [s for s in summary if s["factorization"] == "cp"]
  dense = next(s for s in summary if s["factorization"] == "dense")
  above = [s["rank"] for s in summary
           if paper.get(s["rank"]) is not None
           and paper[s["rank"]] > max(s["finals"])]
  cp_paper = [v for r, v in paper.items() if r != "dense"]
  claim = (f"CP ranks {ranks[0]['rank']}-{ranks[-1]['rank']}: test accuracy "
           f"{min(cp_paper):.4g}-{max(cp_paper):.4g} (dense "
           f"{paper['dense']:.4g}), one run each")
  means = [s["accuracy"][0] for s in ranks]
  ours = (f"official init, n = {min(s['seeds'] for s in summary)} seeds a "
          f"setting, final epoch: means {min(means):.4f}-{max(means):.4f} "
          f"(dense {dense['accuracy'][0]:.4f}); the paper's run above all our "
          "seeds at " + (("rank " if len(above) == 1 else "ranks ")
                         + ", ".join(above) if above else "no setting"))
  return claim, ours


def _ttl(dataset: str, gap_table) -> tuple[str, str]:
  table = gap_table.table(dataset)
  row = _row(table, option="tucker (5, 5, 10)")
  head = next(h for h in row if h.startswith("gap to the dense twin"))
  accuracy = next(h for h in row if h.startswith("test acc"))
  n = row[accuracy].rsplit("(", 1)[1].rstrip(")")
  return ("Tucker layer (5, 5, 10), 66.63x fewer weights than the 784 -> "
          "300 dense layer, accuracy comparable to dense",
          f"{row['compression of that layer']} fewer weights; {row[head]} "
          f"points against the dense twin (n = {n} seeds, paired; rates "
          "chosen on held-out data)")


def _vgg() -> str:
  rows = json.loads((EXPERIMENTS / "benchmarks" / "vgg16_train_step.json")
                    .read_text())["rows"]
  ttl = next(r for r in rows if r["variant"] == "tucker")
  return (f"CIFAR-10 not run (no data here); a VGG-16 training step with "
          f"TTL took {ttl['time_vs_dense']:.3f}x the dense step's time "
          "(batch 32, CPU)")


def _gradients() -> str:
  """The paper's accumulated factor gradients against the truth."""
  from cpac_jax.interpret import validation  # pylint: disable=g-import-not-at-top
  found = json.loads((EXPERIMENTS / "interpret" /
                      "importance_validation.json").read_text())
  by_mode = validation.summarize(found["runs"])
  recovery = {key: cells[validation.ACCUMULATED]["top_k_recovery"]
              for key, cells in by_mode.items()}
  real = ("mnist", "fashion_mnist")
  planted = {k: v for k, v in recovery.items() if not k.startswith(real)}
  rest = {k: v for k, v in recovery.items() if k.startswith(real)}
  means = [statistics.fmean(v) for v in rest.values()]
  perfect = sum(min(v) == 1 for v in planted.values())
  return (
      "accumulated over training, as the paper has them, they recover "
      f"every planted feature, in every seed, in {perfect} of "
      f"{len(planted)} synthetic design-modes (n = "
      f"{min(map(len, planted.values()))} seeds each); on MNIST "
      "and Fashion-MNIST they recover "
      f"{min(means):.2f}-{max(means):.2f} of held-out permutation "
      f"importance's top k (n = {min(map(len, rest.values()))} seeds)")


def _significance() -> str:
  parts, comparisons = [], 0
  names = {"cpac_mnist_rank8": "two-layer net, rank 8",
           "cpac_mnist_rank4": "two-layer net, rank 4",
           "cpac_mnist_1layer_rank5": "one-layer net, rank 5"}
  for name in names:
    found = json.loads((EXPERIMENTS / "interpret" /
                        f"feature_selection_{name}.json").read_text())
    tests = found["paired_tests"]
    comparisons += len(tests)
    combined = [k for k in tests if "next layer" in k]
    test = tests[combined[0] if combined else "least significant first"]
    parts.append(f"{names[name]}: p = {test['wilcoxon_p']:.2g} "
                 f"(n = {test['n']} models)")
  return ("pruning the least significant feature maps first keeps more "
          "accuracy than random orders (Wilcoxon; the score with the next "
          "layer's where there is one) at " + "; ".join(parts)
          + f"; Bonferroni's threshold over the {comparisons} comparisons "
          f"against random in these files: {0.05 / comparisons:.3g}")


def _compress(compress_table) -> str:
  table = compress_table.table(rundir.read_results(compress_table.FOLDER))
  row = _row(table, budget="0.1", condition="CP compress + fine-tune, "
             "global ranks")
  accuracy = next(h for h in row if h.startswith("test accuracy"))
  n = row[accuracy].rsplit("n=", 1)[1].rstrip(")")
  return (f"CP at {row['their compression']} fewer conv weights: "
          f"{row['vs dense, points [95%]']} points against the dense net "
          f"(n = {n} seeds, paired)")


def _t3f(t3f_table) -> str:
  after, before = t3f_table.collect()
  tt = ("tt", 0)
  cells = [f"{label} {statistics.fmean(by_seed.values()):.4f} ± "
           f"{statistics.stdev(by_seed.values()):.4f}"
           for label, by_seed in (("before fine-tuning", before[tt]),
                                  ("after", after[tt]))]
  share = sum(v < t3f_table.t3f.T3F["tt_after"] for v in after[tt].values())
  return (f"TT rank 16 by `cj.compress`: {', '.join(cells)} (n = "
          f"{len(after[tt])} seeds); t3f's 0.9765 is above {share} of them")


def table() -> str:
  gap_table, compress_table = _script("ttl_gap_table"), _script(
      "compress_table")
  rows = [
      ("cpac_mnist", *_cpac("cpac_mnist", ("mnist", 2))),
      ("cpac_mnist_1layer", *_cpac("cpac_mnist_1layer", ("mnist", 1))),
      ("cpac_magnetic_tile", *_cpac("cpac_magnetic_tile",
                                    ("magnetic_tile", 2))),
      ("cpac_magnetic_tile_1layer", *_cpac("cpac_magnetic_tile_1layer",
                                           ("magnetic_tile", 1))),
      ("ttl_gap_mnist", *_ttl("mnist", gap_table)),
      ("ttl_gap_fashion_mnist", *_ttl("fashion_mnist", gap_table)),
      ("benchmarks", "VGG-16 with TTL trains 10% faster on CIFAR-10",
       _vgg()),
      ("interpret", "TTL: gradients with respect to the factor matrices "
       "show which input features matter", _gradients()),
      ("interpret", "CPAC: the CP factor values rank the significance of "
       "each feature map", _significance()),
      ("compress_fashion_mnist", "- (ours: `cj.compress` on a trained CNN)",
       _compress(compress_table)),
      ("compress_t3f_mnist", "t3f's tutorial: an MNIST MLP's 784x625 layer "
       "as a TT-matrix of rank 16, 0.6443 before fine-tuning, 0.9765 after "
       "2 epochs (one run)", _t3f(_script("t3f_table"))),
  ]
  lines = ["| experiment | the paper's claim | ours |", "|---|---|---|"]
  lines += [f"| {_link(folder)} | {claim} | {ours} |"
            for folder, claim, ours in rows]
  return "\n".join(lines)


def blocks() -> dict[tuple[Path, str], str]:
  """The block this script writes: (README, block name) -> text."""
  return {(ROOT / "README.md", "headline"): table()}


def main(argv: list[str]) -> int:
  return report.write_blocks(blocks(), argv, "python scripts/headline.py")


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
