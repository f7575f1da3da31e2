"""Reports: results.csv to tables and plots, and the generated README
blocks."""


import pytest

from cpac_jax import report


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
