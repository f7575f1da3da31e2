"""Reports: results.csv to tables and plots, and the generated README
blocks."""

import csv

import pytest

from cpac_jax import report
from cpac_jax.config import expand, run_key, setting
from tests.conftest import load_config


def test_block_refuses_markers_out_of_order(tmp_path):
  readme = tmp_path / "README.md"
  readme.write_text("<!-- a:end -->\nx\n<!-- a:begin -->\n")
  with pytest.raises(ValueError, match="no single"):
    report.block(readme, "a")


def test_write_blocks_checks_without_writing(tmp_path, capsys):
  readme = tmp_path / "README.md"
  readme.write_text("<!-- a:begin -->\nold\n<!-- a:end -->\n")
  blocks = {(readme, "a"): "new"}
  assert report.write_blocks(blocks, ["--check"], "python gen.py") == 1
  assert "rerun python gen.py" in capsys.readouterr().out
  assert report.block(readme, "a") == "old"
  assert report.write_blocks(blocks, [], "python gen.py") == 0
  assert report.write_blocks(blocks, ["--check"], "python gen.py") == 0
  assert report.block(readme, "a") == "new"


def _rows(seeds_per_rank: dict) -> list[dict]:
  """Results rows: each rank (or "dense") with its number of seeds."""
  rows = []
  for rank, n in seeds_per_rank.items():
    for seed in range(n):
      dense = rank == "dense"
      rows.append({
          "factorization": "dense" if dense else "cp",
          "rank": "" if dense else str(rank), "seed": str(seed),
          "params": "100", "compression": "1.0",
          "layer_compression": "1.0" if dense else str(10 / rank),
          "test_accuracy": str(0.9 + 0.001 * seed),
          "best_test_accuracy": str(0.91 + 0.001 * seed),
          "train_seconds": "1"})
  return rows


def test_plots_say_what_they_show_and_keep_ranks_categorical(monkeypatch,
                                                             tmp_path):
  import ml_collections  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict({
      "name": "cpac_mnist_quick", "num_epochs": 2, "batch_size": 32,
      "model": {"name": "cpac_cnn_2"}, "dataset": {"name": "mnist"},
      "sweep": ({"num_epochs": [2, 4]},)})
  summary = report.summarize(_rows({1: 1, 2: 3, "dense": 3}))
  title = report.plot_title(config, summary)
  assert title == ("cpac_mnist_quick: cpac_cnn_2 on mnist, test accuracy\n"
                   "2-4 epochs at batch 32, n = 1-3 runs a point")
  axes = []
  monkeypatch.setattr(report, "_save",
                      lambda fig, ax, title, path, outside=False: axes.append(ax) or "x")
  report._plots(summary, {"1": 0.95, "2": 0.96}, tmp_path, title)
  by_rank = axes[0]
  labels = by_rank.get_legend_handles_labels()[1]
  assert "ours, final epoch (mean ± std, n = 1-3; n = 1: no bar)" in labels
  assert "paper (one run)" in labels
  # No line joins the ranks; a rank's points stand apart.
  lines = [l for l in by_rank.get_lines() if len(l.get_xdata()) > 1
           and l.get_linestyle() not in ("None", "none", "")]
  assert all(len(set(l.get_ydata())) == 1 for l in lines)  # the dense line
  xs = {round(float(x), 3) for l in by_rank.get_lines()
        for x in l.get_xdata() if l.get_linestyle() in ("None", "none", "")}
  assert len(xs) == 6  # two ranks: ours final, paper, ours best
  one = report.summarize(_rows({4: 1}))
  assert "± 0.0000" not in report._table(one, {}, {})
  assert "0.9000 (n = 1)" in report._table(one, {}, {})


def test_report_puts_paper_numbers_beside_ours(tmp_path):
  config = load_config("cpac_mnist")
  keys = {(run.model.factorization, run.model.rank, run.seed): run_key(run)
          for _, run in expand(config)
          if setting(run, "model.init") == "default"}
  rows = [
      {"factorization": "cp", "rank": "1", "params": "100",
       "compression": "2.0", "layer_compression": "10.0",
       "test_accuracy": str(acc), "best_test_accuracy": str(acc + 0.01),
       "best_epoch": str(3 + seed), "test_loss": str(0.3 - 0.1 * seed),
       "train_seconds": "1", "seed": str(seed),
       "key": keys[("cp", 1, seed)]}
      for seed, acc in enumerate([0.90, 0.92])
  ] + [{"factorization": "dense", "rank": "", "params": "200",
        "compression": "1.0", "layer_compression": "1.0",
        "test_accuracy": "0.95", "best_test_accuracy": "0.95",
        "best_epoch": "", "test_loss": "",  # as rows from before they were
        "train_seconds": "1", "seed": "0",
        "key": keys[("dense", config.model.rank, 0)]}]
  with open(tmp_path / "results.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  (tmp_path / "README.md").write_text(
      "intro\n<!-- results:begin -->\nold table\n<!-- results:end -->\n"
      "outro\n")
  text = report.write_report(tmp_path, config).read_text()
  # two seeds: t(0.975, 1) = 12.706, so 0.91 ± 12.706 * 0.01; the paper's
  # 0.9278 lies above both final accuracies, between the best-epoch ones
  # The predictive t: (0.9278 - 0.91) / (0.0141 * sqrt(1 + 1/2)) = +1.03,
  # two-sided p on 1 degree of freedom 2 * (1/2 - atan(1.03) / pi) = 0.49.
  assert ("| cp | 1 | 100 | 2.00x | 10.00x | 2 | 0.9100 ± 0.0141 | "
          "0.7829-1.0371 | 0.9200 ± 0.0141 | 3.5 | 0.2500 | 0.9278 | 0.2436 "
          "| +1.03 (0.49) | 100 / 50 |") in text
  assert ("| dense | dense | 200 | 1.00x | - | 1 | 0.9500 (n = 1) | - | "
          "0.9500 (n = 1) | - | - | 0.9844 | 0.0484 | - | 100 / 100 |") in text
  assert "factorization=cp-rank=12-seed=2: missing, not run yet" in text
  readme = (tmp_path / "README.md").read_text()
  assert "old table" not in readme and "0.9100 ± 0.0141" in readme
  assert readme.startswith("intro\n") and readme.endswith("outro\n")
