"""Every generated README block holds what its generator makes of the
committed files: a number typed by hand, or a file changed without
regenerating the block, fails here."""

import importlib.util
from pathlib import Path

import pytest

from cpac_jax import report, rundir
from tests.conftest import load_config

ROOT = Path(__file__).resolve().parents[1]
# Scripts with a `blocks()` returning {(README path, block name): text}.
GENERATORS = ("scripts/cpac_gap.py", "scripts/headline.py",
              "scripts/compress_table.py",
              "scripts/shootout_table.py", "scripts/t3f_table.py",
              "scripts/ttl_gap_table.py", "scripts/vit_table.py")


def _blocks():
  for script in GENERATORS:
    spec = importlib.util.spec_from_file_location(Path(script).stem,
                                                  ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for (path, name), text in module.blocks().items():
      yield pytest.param(path, name, text,
                         id=f"{Path(path).relative_to(ROOT)}:{name}")


@pytest.mark.parametrize("path,name,text", list(_blocks()))
def test_generated_block_matches_its_files(path, name, text):
  assert report.block(path, name) == text, (
      f"{path} block {name!r} is stale: rerun its generator")


_RESULTS = sorted(p.parent.name for p in ROOT.glob("experiments/*/README.md")
                  if "<!-- results:begin -->" in p.read_text())


@pytest.mark.parametrize("experiment", _RESULTS)
def test_results_table_matches_its_results_csv(experiment):
  config = load_config(experiment)
  workdir = ROOT / "experiments" / experiment
  rows = [r for r in rundir.read_results(workdir) if r["status"] == "ok"]
  table = report._table(report.summarize(rows), dict(config.paper),  # pylint: disable=protected-access
                        dict(config.paper_loss))
  assert report.block(workdir / "README.md", "results") == table


def test_block_and_splice_refuse_a_file_without_the_markers(tmp_path):
  readme = tmp_path / "README.md"
  readme.write_text("# x\n<!-- a:begin -->\nold\n<!-- a:end -->\nrest\n")
  report.splice(readme, "a", "new")
  assert readme.read_text() == ("# x\n<!-- a:begin -->\nnew\n<!-- a:end -->"
                                "\nrest\n")
  assert report.block(readme, "a") == "new"
  with pytest.raises(ValueError, match="no single <!-- b:begin -->"):
    report.splice(readme, "b", "text")
  assert "new" in readme.read_text()
