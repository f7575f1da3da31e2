"""The configs: a package whose modules import each other, build without
reading a file, and declare what earlier stages chose."""

import ast
import builtins
import importlib
import pathlib

import pytest

from cpac_jax.config import expand

ROOT = pathlib.Path(__file__).resolve().parents[1]
NAMES = sorted(p.stem for p in (ROOT / "configs").glob("*.py")
               if p.stem != "__init__")
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
