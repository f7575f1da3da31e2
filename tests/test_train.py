"""End to end: main and sweep on tiny data sets in the real file formats."""

import csv
import importlib
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cpac_jax import models, report, sweep, train
from cpac_jax.config import expand, override, run_key, setting

ROOT = Path(__file__).resolve().parents[1]


def load_config(name: str, preset: str = ""):
  """configs/NAME.py's config, the package module configs.NAME's."""
  return importlib.import_module(f"configs.{name}").get_config(preset)


def tiny(config, data_dir, **overrides):
  config.dataset.data_dir = str(data_dir)
  config.num_epochs = 3
  config.batch_size = 16
  config.steps_per_call = 10
  config.optimizer.learning_rate = 3e-3
  for field, value in overrides.items():
    override(config, field, value)
  return config


def test_main_trains_cpac_net_and_writes_its_workdir(mnist_dir, tmp_path):
  workdir = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, "-m", "cpac_jax.main",
       f"--config={ROOT / 'configs' / 'cpac_mnist.py'}",
       f"--workdir={workdir}", f"--config.dataset.data_dir={mnist_dir}",
       "--config.num_epochs=3", "--config.batch_size=16",
       "--config.optimizer.learning_rate=0.003", "--config.model.rank=4"],
      capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-2000:]
  row = json.loads((workdir / "result.json").read_text())
  assert row["test_accuracy"] > 0.9  # the planted blocks are easy to learn
  assert row["rank"] == "4" and row["params"] > 0
  metrics = [json.loads(line) for line in
             (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [m["epoch"] for m in metrics] == [1, 2, 3]
  assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
  assert row["test_loss"] == metrics[-1]["test_loss"]
  best = max(metrics, key=lambda m: m["test_accuracy"])
  assert (row["best_epoch"], row["best_test_accuracy"]) == (
      best["epoch"], best["test_accuracy"])
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  assert (workdir / "checkpoints" / str(3 * 512 // 16)).is_dir()  # global step
  assert json.loads((workdir / "config.json").read_text())["model"]["rank"] == 4


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


@pytest.mark.slow
def test_max_pool_2x2_is_nnx_max_pool_without_a_scatter():
  from cpac_jax.models.cnn import max_pool_2x2
  from cpac_jax.models.vgg import VGG16

  x = jax.random.normal(jax.random.key(0), (2, 7, 6, 3))  # odd: cropped
  pool = lambda x: nnx.max_pool(x, (2, 2), strides=(2, 2))
  np.testing.assert_array_equal(max_pool_2x2(x), pool(x))
  loss = lambda f: lambda x: jnp.sum(jnp.sin(f(x)))
  np.testing.assert_allclose(jax.grad(loss(max_pool_2x2))(x),
                             jax.grad(loss(pool))(x), rtol=1e-6)
  # VGG-16's step pools without XLA's select-and-scatter.
  net = VGG16(rngs=nnx.Rngs(0))
  net.eval()  # batch statistics read, not updated
  jaxpr = jax.make_jaxpr(jax.grad(lambda x: jnp.sum(net(x))))(
      jnp.ones((1, 32, 32, 3)))
  assert "select_and_scatter" not in str(jaxpr)
  assert "reduce_window" not in str(jaxpr)



@pytest.mark.parametrize("factorization", ["dense", "tucker", "cp"])
def test_vgg16_variants_build_with_fewer_parameters(factorization):
  from flax import nnx

  from cpac_jax.layers import count_params

  config = load_config("ttl_vgg16_cifar10")
  override(config, "model.factorization", factorization)
  override(config, "model.rank", 0.1 if factorization == "cp" else 4)
  model = nnx.eval_shape(lambda: models.build(config.model, (32, 32, 3), 10,
                                              nnx.Rngs(0)))
  ours, dense = models.count_factorized(model)
  if factorization == "dense":
    assert ours == dense == 0
  else:
    assert 0 < ours < dense / 5
  assert count_params(model) > 0


@pytest.mark.slow
@pytest.mark.parametrize("name,kwargs", [
    ("cnn", {}), ("ttl_mlp", {"hidden_shape": (15, 20)})])
def test_tt_variants_build_and_count_their_compression(name, kwargs):
  import jax.numpy as jnp
  import ml_collections
  from flax import nnx

  from cpac_jax import layers

  model = ml_collections.ConfigDict(
      {"name": name, "factorization": "tt", "rank": 0.1, "kwargs": kwargs})
  net = models.build(model, (28, 28, 1), 10, nnx.Rngs(0))
  tt = [node for _, node in nnx.iter_graph(net)
        if isinstance(node, (layers.TTConv, layers.TTDense))]
  assert tt and net(jnp.zeros((2, 28, 28, 1))).shape == (2, 10)
  ours, dense = models.count_factorized(net)
  assert ours == sum(layers.count_params(t) - t.bias.size for t in tt)
  assert 0.05 < ours / dense <= 0.1


def test_shootout_families_get_matched_budgets_of_the_hidden_layer():
  from flax import nnx

  from cpac_jax.config import expand

  config = load_config("shootout_ttl_mnist")
  weights = {}
  for _, run in expand(config):
    if run.seed:
      continue
    net = nnx.eval_shape(lambda run=run: models.build(
        run.model, (28, 28, 1), 10, nnx.Rngs(0)))
    ours, _ = models.count_factorized(net)
    if net.bottleneck is not None:
      ours = net.bottleneck.kernel.size + net.hidden.kernel.size
    budget = run.model.rank if ours else 1.0
    if run.model.factorization == "dense" and net.bottleneck is not None:
      budget = next(f for f in (0.5, 0.1, 0.03, 0.01)
                    if 1084 * int(784 * 300 * f / 1084) == ours)
    weights.setdefault(budget, []).append(ours or 784 * 300)
  assert sorted(weights) == [0.01, 0.03, 0.1, 0.5, 1.0]
  for budget, counts in weights.items():
    if budget < 1:  # Tucker, TT, low-rank dense: each within the budget,
      assert len(counts) == 3  # none wasting more than a third of it
      assert all(2 / 3 * budget * 235_200 <= c <= budget * 235_200
                 for c in counts), (budget, counts)


@pytest.mark.slow
def test_cpac_shootout_holds_matched_budgets_of_the_second_conv():
  import jax.numpy as jnp
  from flax import nnx

  from cpac_jax.config import expand

  config = load_config("shootout_cpac_mnist")
  weights = {}
  for _, run in expand(config):
    if run.seed:
      continue
    net = models.build(run.model, (28, 28, 1), 10, nnx.Rngs(0))
    assert isinstance(net.convs[0], nnx.Conv)  # the first conv stays dense
    assert net(jnp.zeros((1, 28, 28, 1))).shape == (1, 10)
    ours, dense = models.count_factorized(net)
    if run.model.factorization == "dense":
      assert ours == 0
      continue
    assert dense == 576 and type(net.convs[1]).__name__ == {
        "cp": "CPConv", "tucker": "TuckerConv", "tt": "TTConv"}[
            run.model.factorization]
    weights.setdefault(run.model.rank, []).append(ours)
  assert sorted(weights) == [0.05, 0.15, 0.25, 0.5]
  for budget, counts in weights.items():  # CP, Tucker, TT: each within the
    assert len(counts) == 3               # budget, none below half of it
    assert all(budget * 576 / 2 <= c <= budget * 576 for c in counts), (
        budget, counts)


@pytest.mark.slow
def test_cnn_shootout_holds_matched_budgets_of_the_four_convs():
  from flax import nnx

  from cpac_jax.config import expand

  weights = {}
  for _, run in expand(load_config("shootout_cnn_fashion_mnist")):
    if run.seed:
      continue
    net = nnx.eval_shape(lambda run=run: models.build(
        run.model, (28, 28, 1), 10, nnx.Rngs(0)))
    assert isinstance(net.convs[0], nnx.Conv)  # the first conv stays dense
    ours, dense = models.count_factorized(net)
    if run.model.factorization != "dense":
      assert dense == 138_240
      weights.setdefault(run.model.rank, []).append(ours)
  assert sorted(weights) == [0.01, 0.1, 0.5]
  for budget, counts in weights.items():  # CP, Tucker, TT: each within the
    assert len(counts) == 3               # budget, none below 70% of it
    assert all(0.7 * budget * 138_240 <= c <= budget * 138_240
               for c in counts), (budget, counts)


def test_train_step_updates_batch_norm_statistics():
  import jax.numpy as jnp
  import numpy as np
  import optax
  from flax import nnx

  class Net(nnx.Module):
    def __init__(self):
      self.linear = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
      self.norm = nnx.BatchNorm(4, rngs=nnx.Rngs(0))

    def __call__(self, x):
      return self.norm(self.linear(x))

  net = Net()
  net.train()
  graphdef, params, rest = nnx.split(net, nnx.Param, ...)
  tx = optax.sgd(0.1)
  step = jax.jit(train.make_step(graphdef, tx))
  x = jax.random.normal(jax.random.key(0), (8, 3))
  y = jnp.arange(8) % 4
  new_params, new_rest, _, loss, logits, grads = step(
      params, rest, tx.init(params), x, y)
  assert logits.shape == (8, 4) and float(loss) > 0
  assert not np.allclose(new_rest["norm"]["mean"][...], 0.0)
  assert not np.allclose(new_params["linear"]["kernel"][...],
                         params["linear"]["kernel"][...])


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
