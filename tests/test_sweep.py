"""Sweeps end to end on tiny data sets in the real file formats: resume,
checks before training, shards, vectorized runs, per-seed splits."""

import csv
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from cpac_jax import report, sweep, train
from cpac_jax.config import expand, override, run_key, setting
from tests.conftest import load_config, tiny

ROOT = Path(__file__).resolve().parents[1]


def test_sweep_runs_on_cifar_tarball(cifar_dir, tmp_path):
  # VGG-16 itself is too slow to train in a unit test on the CPU; a TTL MLP
  # on (32, 32, 3) inputs takes the same data path, per-channel
  # normalisation included.
  config = tiny(load_config("ttl_vgg16_cifar10", "quick"), cifar_dir,
                **{"model.name": "ttl_mlp", "model.rank": (4, 4, 3, 8),
                   "num_epochs": 2, "eval_batch_size": 16,
                   "num_test_examples": 0})
  config.sweep = ({"model.factorization": ["tucker", "dense"]},)
  rows = sweep.run_sweep(config, tmp_path)
  assert [(r["dataset"], r["factorization"]) for r in rows] == [
      ("cifar10", "tucker"), ("cifar10", "dense")]
  accuracies = [float(r["test_accuracy"]) for r in rows]
  assert min(accuracies) > 0.9  # chance is 0.1: the blocks were learnt
  assert (tmp_path / "results.md").exists()

def test_sweep_runs_every_run_then_skips_them_when_rerun(mnist_dir, tmp_path,
                                                         monkeypatch):
  config = tiny(load_config("cpac_mnist", "quick"), mnist_dir, num_epochs=1)
  config.sweep = ({"model.factorization": ["cp"], "model.rank": [1, 3],
                   "seed": [0]}, {"model.factorization": ["dense"],
                                  "seed": [0]})
  rows = sweep.run_sweep(config, tmp_path)
  assert [(r["factorization"], r["rank"]) for r in rows] == [
      ("cp", "1"), ("cp", "3"), ("dense", "")]
  assert len({r["key"] for r in rows}) == 3
  assert (tmp_path / "results.md").exists()
  assert (tmp_path / "accuracy_vs_rank.png").stat().st_size > 1000
  assert (tmp_path / "accuracy_vs_compression.png").stat().st_size > 1000

  def must_not_train(*args, **kwargs):
    raise AssertionError("a finished run was trained again")

  monkeypatch.setattr(train, "train_runs", must_not_train)
  assert sweep.run_sweep(config, tmp_path) == rows
  with open(tmp_path / "results.csv", newline="") as f:
    assert len(list(csv.DictReader(f))) == 3

def test_sweep_checks_every_run_before_training_any(mnist_dir, tmp_path):
  config = tiny(load_config("cpac_mnist", "quick"), mnist_dir)
  config.sweep = ({"model.rank": [2, 0]},)  # the second run is invalid
  with pytest.raises(ValueError, match="CP rank 0"):
    sweep.run_sweep(config, tmp_path)
  assert not (tmp_path / "results.csv").exists()
  assert not (tmp_path / "runs").exists()

def test_sweep_adds_optional_fields_to_a_locked_config():
  config = load_config("cpac_mnist")
  config.lock()  # as --config=... hands it over
  inits = {setting(run, "model.init") for _, run in expand(config)}
  assert inits == {"default", "official"}
  with pytest.raises(ValueError, match="model.rnak"):
    override(config, "model.rnak", 2)

def test_sweep_rejects_unknown_fields(mnist_dir):
  config = tiny(load_config("cpac_mnist", "quick"), mnist_dir)
  config.sweep = ({"model.rnak": [2]},)
  with pytest.raises(ValueError, match="model.rnak"):
    expand(config)

def test_three_shards_merge_into_one_table_with_every_run_once(
    mnist_dir, tmp_path):
  config = tiny(load_config("cpac_mnist", "quick"), mnist_dir, num_epochs=1)
  config.sweep = ({"model.rank": [1, 2], "seed": [0, 1, 2]},)
  keys = {run_key(run) for _, run in expand(config)}
  merged = tmp_path / "merged"
  merged.mkdir()
  for index in range(3):  # three machines, each with its own workdir
    machine = tmp_path / f"machine{index}"
    rows = sweep.run_sweep(config, machine, shard=(index, 3))
    assert all(sweep.shard_of(r["key"], 3) == index for r in rows)
    shard_file = machine / f"results-shard{index}of3.csv"
    shard_file.rename(merged / shard_file.name)
  report.write_report(merged, config)
  with open(merged / "results.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert sorted(r["key"] for r in rows) == sorted(keys)  # none lost, no twin
  assert "missing" not in (merged / "results.md").read_text()

def test_shard_must_be_i_of_n(mnist_dir, tmp_path):
  config = tiny(load_config("cpac_mnist", "quick"), mnist_dir)
  with pytest.raises(ValueError, match="shard 3/3 is invalid"):
    sweep.run_sweep(config, tmp_path, shard=(3, 3))

def test_vectorized_sweep_trains_each_run_as_its_separate_run_does(
    mnist_dir, tmp_path):
  # Ranks 1 and 3 are padded to 3 and stacked; two seeds see different data;
  # the dense net is a group of its own; all in one compiled step.
  config = tiny(load_config("cpac_mnist"), mnist_dir, num_epochs=2)
  config.sweep = ({"model.factorization": ["cp"], "model.rank": [1, 3],
                   "seed": [0, 1]},
                  {"model.factorization": ["dense"], "seed": [0]})
  separate = sweep.run_sweep(config, tmp_path / "separate")
  together = sweep.run_sweep(config, tmp_path / "together", vectorize=True)
  assert sorted(r["key"] for r in together) == sorted(
      r["key"] for r in separate)
  by_key = {r["key"]: r for r in separate}
  assert {r["trained"] for r in separate} == {"alone"}
  # seed 0: ranks 1, 3 and dense in one program; seed 1: ranks 1 and 3
  assert sorted(r["trained"] for r in together) == (
      ["vectorized (2 runs)"] * 2 + ["vectorized (3 runs)"] * 3)
  assert report.mixed_training_note(together) == ""
  assert "4th decimal" in report.mixed_training_note(together + separate)
  for row in together:
    twin = by_key[row["key"]]
    assert row["status"] == "ok" and row["params"] == twin["params"]
    assert abs(float(row["test_accuracy"]) - float(twin["test_accuracy"])
               ) <= 1 / 256
    runs = [tmp_path / where / "runs" / f"{row['run']}-{row['key']}"
            for where in ("separate", "together")]
    (ours, _), (theirs, _) = (train.restore(run) for run in runs)
    ours, theirs = (jax.tree.leaves(nnx.state(m, nnx.Param))
                    for m in (ours, theirs))
    assert [a.shape for a in ours] == [a.shape for a in theirs]
    for a, b in zip(ours, theirs):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    metrics = (runs[1] / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(m)["epoch"] for m in metrics] == [1, 2]

def test_vectorized_sweep_refuses_runs_that_differ_in_more_than_rank_and_seed(
    mnist_dir, tmp_path):
  config = tiny(load_config("cpac_mnist"), mnist_dir)
  config.sweep = ({"model.rank": [1, 2], "optimizer.learning_rate": [1e-3,
                                                                     1e-2]},)
  with pytest.raises(ValueError, match="differ in optimizer.learning_rate"):
    sweep.run_sweep(config, tmp_path / "sweep", vectorize=True)
  assert not (tmp_path / "sweep" / "runs").exists()

def test_magnetic_tile_sweep_trains_each_seed_on_its_own_split(
    magnetic_tile_dir, tmp_path):
  config = tiny(load_config("cpac_magnetic_tile_1layer"), magnetic_tile_dir,
                num_epochs=2, batch_size=3)
  config.sweep = ({"model.rank": [1, 2], "model.init": ["official"],
                   "seed": [0, 1]},)
  rows = sweep.run_sweep(config, tmp_path, vectorize=True)
  assert sorted((r["seed"], r["rank"]) for r in rows) == [
      ("0", "1"), ("0", "2"), ("1", "1"), ("1", "2")]
  assert all(r["init"] == "official" and r["dataset"] == "magnetic_tile"
             for r in rows)
  # runs of two seeds would train on two splits: never in one program
  runs = [(run, tmp_path / "together" / name)
          for name, run in expand(config)][:2]  # seeds 0 and 1
  with pytest.raises(ValueError, match="a seed at a time"):
    train.train_runs(runs, tmp_path / "state")
