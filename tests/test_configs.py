"""The configs: a package whose modules import each other, build without
reading a file, and declare what earlier stages chose; the studies that
run them."""

import ast
import builtins
import importlib
import importlib.util
import pathlib

import pytest

from cpac_jax.config import expand

ROOT = pathlib.Path(__file__).resolve().parents[1]
NAMES = sorted(p.stem for p in (ROOT / "configs").glob("*.py")
               if p.stem not in ("__init__", "studies"))
PRESETS = ("", "quick", "select", "one_seed", "epochs20", "float64",
           "default_init", "default_seed0")


def _presets(module):
  """The presets of `module` among PRESETS (a config refuses the others)."""
  for preset in PRESETS:
    try:
      yield preset, module.get_config(preset)
    except ValueError:
      continue


@pytest.mark.parametrize("name", NAMES)
def test_a_config_builds_its_sweep_without_opening_a_file(name, monkeypatch):
  module = importlib.import_module(f"configs.{name}")

  def refuse(*args, **kwargs):
    raise AssertionError(f"configs/{name}.py opened {args[:1]}")

  monkeypatch.setattr(builtins, "open", refuse)
  monkeypatch.setattr(pathlib.Path, "open", refuse)
  built = {preset: expand(config) for preset, config in _presets(module)}
  monkeypatch.undo()
  assert built.get("") or built.get("quick")


@pytest.mark.parametrize("name", NAMES)
def test_an_unset_dtype_leaves_every_run_key_as_it_was(name):
  """config.dtype came after results were keyed by their configs: left
  unset, every run's key is what it was before the field existed; set, it
  is another run."""
  from cpac_jax.config import override, run_key

  module = importlib.import_module(f"configs.{name}")
  for _, config in _presets(module):
    for _, run in expand(config):
      before = run.copy_and_resolve_references()
      with before.unlocked():
        del before["dtype"]  # the schema as it was
      assert run_key(run) == run_key(before)
      override(run, "dtype", "bfloat16")
      assert run_key(run) != run_key(before)


@pytest.mark.parametrize("name", NAMES)
def test_configs_import_each_other_as_modules(name):
  tree = ast.parse((ROOT / "configs" / f"{name}.py").read_text())
  imported = {alias.name for node in ast.walk(tree)
              if isinstance(node, ast.Import) for alias in node.names}
  assert "runpy" not in imported and "importlib" not in imported


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
def test_ttl_gap_declares_the_rates_its_committed_stage_1_chose(dataset):
  from configs import ttl_gap_mnist as gap

  select = gap.build(dataset, "select")
  workdir = ROOT / "experiments" / f"ttl_gap_{dataset}" / "select"
  assert gap.CHOSEN_RATES[dataset] == gap.chosen_rates(select, workdir)
  stage_2 = {run.optimizer.learning_rate for _, run in expand(
      gap.build(dataset))}
  assert stage_2 == set(gap.CHOSEN_RATES[dataset].values())


def test_every_study_names_what_exists():
  """Each study's commands name configs and presets that build, folders
  under experiments/ that hold results, scripts and modules that exist;
  every experiment folder with results is some study's."""
  from configs.studies import DEFAULT, STUDIES, SUMMARIES

  for study in STUDIES.values():
    for command in study.stages + study.tables:
      for arg in command:
        if arg.startswith("--config=configs/"):
          name, _, preset = arg.removeprefix("--config=configs/").partition(
              ".py")
          importlib.import_module(f"configs.{name}").get_config(
              preset.lstrip(":"))
        elif arg.startswith(("--workdir=experiments/", "--out=experiments/",
                             "--sweep_dir=experiments/")):
          folder = arg.split("=", 1)[1].split("/")[1]
          assert (ROOT / "experiments" / folder).is_dir(), (study.name, arg)
        elif arg.startswith("scripts/"):
          assert (ROOT / arg).is_file(), (study.name, arg)
      if command[:2] == ("python", "-m"):
        assert importlib.util.find_spec(command[2]), (study.name, command)
  assert set(DEFAULT) <= set(STUDIES)
  assert all((ROOT / c[1]).is_file() for c in SUMMARIES)
  with_results = {p.parent.name for p in ROOT.glob("experiments/*/results.csv")}
  assert with_results <= set(STUDIES), with_results - set(STUDIES)


def test_study_lists_a_studys_commands_in_order(capsys):
  spec = importlib.util.spec_from_file_location("study",
                                                ROOT / "scripts" / "study.py")
  study = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(study)
  study.main(["list", "ttl_gap_mnist"])
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == "bash scripts/fetch_data.sh mnist"
  assert ":select" in lines[1] and "ttl_gap_table.py mnist" in lines[3]
  assert lines[-2:] == ["python scripts/cpac_gap.py",
                        "python scripts/headline.py"]
  with pytest.raises(SystemExit, match="unknown studies"):
    study.main(["run", "no_such_study"])
