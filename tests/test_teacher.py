"""Validation examples held out of training, and the teacher options: a
factorized layer decomposed from a trained dense twin, and distillation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from cpac_jax import data, models, report, rundir, sweep, train
from cpac_jax.config import expand, run_key, teacher_config, validate
from tests.conftest import load_config, tiny


def ttl(data_dir, **overrides):
  return tiny(load_config("ttl_mnist"), data_dir, **overrides)


def test_validation_examples_are_the_last_training_examples(mnist_dir):
  config = ttl(mnist_dir, **{"dataset.validation_examples": 100})
  train_split, held_out = data.load_splits(config.dataset)
  full = data.load("mnist", "train", mnist_dir)
  assert len(train_split.labels) == 412 and len(held_out.labels) == 100
  np.testing.assert_array_equal(held_out.images, full.images[-100:])
  np.testing.assert_array_equal(train_split.images, full.images[:-100])
  config.dataset.validation_examples = 512
  with pytest.raises(ValueError, match="leaves nothing to train on"):
    data.load_splits(config.dataset)
  config.dataset.validation_examples = -1
  with pytest.raises(ValueError, match="validation_examples must be"):
    validate(config)


def test_teacher_config_and_its_errors(mnist_dir):
  config = ttl(mnist_dir, **{
      "model.init": "teacher", "distill_weight": 0.5,
      "teacher": "model.factorization=dense, optimizer.learning_rate=1e-3"})
  teacher = teacher_config(config)
  assert teacher.model.factorization == "dense"
  assert teacher.optimizer.learning_rate == 1e-3
  assert teacher.teacher is None and teacher.model.init is None  # unset
  assert teacher.model.rank == config.model.rank
  config.teacher = ""
  with pytest.raises(ValueError, match="need config.teacher"):
    validate(config)
  config.teacher = "model.factorisation=dense"
  with pytest.raises(ValueError, match="unknown config field"):
    validate(config)
  config.teacher = "model.factorization=dense"
  config.model.init, config.distill_weight = "default", 0.0
  with pytest.raises(ValueError, match="set but unused"):
    validate(config)
  config.distill_weight = 1.5
  with pytest.raises(ValueError, match=r"distill_weight must be in \[0, 1\]"):
    validate(config)


@pytest.mark.slow
def test_from_teacher_at_full_rank_computes_the_teacher():
  teacher = models.TTLMLP(factorization="dense", rngs=nnx.Rngs(1))
  student = models.TTLMLP(factorization="tucker", rank=(28, 28, 300),
                          rngs=nnx.Rngs(2))
  x = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1))
  assert float(jnp.abs(student(x) - teacher(x)).max()) > 0.1
  models.from_teacher(student, teacher)
  np.testing.assert_allclose(student(x), teacher(x), atol=1e-4)
  with pytest.raises(ValueError, match="no counterpart in the teacher"):
    models.from_teacher(student, models.CPACNet(rngs=nnx.Rngs(0)))


@pytest.mark.slow
def test_distillation_loss_is_cross_entropy_at_weight_0_and_soft_at_1():
  logits = jax.random.normal(jax.random.key(0), (5, 10))
  teacher = jax.random.normal(jax.random.key(1), (5, 10))
  labels = jnp.arange(5)
  hard = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  np.testing.assert_allclose(
      train.distillation_loss(0.0, 4.0)(logits, (labels, teacher)), hard)
  soft = optax.softmax_cross_entropy(logits / 2, jax.nn.softmax(teacher / 2))
  np.testing.assert_allclose(
      train.distillation_loss(1.0, 2.0)(logits, (labels, teacher)), 4 * soft,
      rtol=1e-6)


def test_sweep_with_a_teacher_and_validation_examples(mnist_dir, tmp_path):
  config = ttl(mnist_dir, **{"dataset.validation_examples": 128,
                             "model.rank": (28, 28, 300)})
  config.sweep = (
      {"model.factorization": ["dense"], "seed": [0]},
      {"model.init": ["teacher"], "num_epochs": [1],
       "optimizer.learning_rate": [1e-6], "seed": [0],
       # the teacher's config is the student's with these fields changed
       "teacher": ["model.factorization=dense, num_epochs=3, "
                   "optimizer.learning_rate=0.003"]},
      {"distill_weight": [0.5], "teacher": ["model.factorization=dense"],
       "seed": [0]},
  )
  rows = sweep.run_sweep(config, tmp_path / "sweep")
  assert [r["status"] for r in rows] == ["ok"] * 3
  assert {r["evaluated_on"] for r in rows} == {"validation"}
  dense, decomposed, distilled = rows
  # Decomposed at full rank and barely trained: the teacher's accuracy.
  assert abs(float(decomposed["test_accuracy"])
             - float(dense["test_accuracy"])) <= 0.02
  assert float(distilled["test_accuracy"]) > 0.9
  table = (tmp_path / "sweep" / "results.md").read_text()
  assert "validation acc, final epoch" in table and "test acc" not in table
  assert "teacher=model.factorization=dense" in table  # the setting column
  assert "learning_rate=1e-06" in table
  # A teacher's run must come first; trained together is refused.
  lonely = ttl(mnist_dir, **{"distill_weight": 0.5,
                             "teacher": "model.factorization=dense"})
  with pytest.raises(ValueError, match="has no finished run"):
    train.train_runs([(lonely, tmp_path / "alone" / "run-abc")])
  with pytest.raises(ValueError, match="train one at a time"):
    train.train_runs([(lonely, tmp_path / "a"), (lonely, tmp_path / "b")],
                     tmp_path / "state")


def test_report_refuses_test_and_validation_rows_in_one_table(tmp_path):
  config = load_config("ttl_mnist", "quick")
  row = {c: "" for c in rundir.COLUMNS}
  row.update(factorization="dense", params=1, compression=1,
             layer_compression=1, test_accuracy=0.9, best_test_accuracy=0.9,
             train_seconds=1, status="ok")
  (_, first), (_, second) = expand(config)
  rundir.write_rows(tmp_path / "results.csv", [
      {**row, "key": run_key(first), "evaluated_on": "test"},
      {**row, "key": run_key(second), "evaluated_on": "validation"}])
  with pytest.raises(ValueError, match="mixes runs evaluated on the test"):
    report.write_report(tmp_path, config)


@pytest.mark.slow
def test_bottleneck_is_a_rank_limited_dense_layer():
  net = models.TTLMLP(factorization="dense", bottleneck=10, rngs=nnx.Rngs(0))
  product = net.bottleneck.kernel[...] @ net.hidden.kernel[...]
  assert product.shape == (784, 300)
  assert np.linalg.matrix_rank(np.asarray(product)) == 10
  with pytest.raises(ValueError, match="bottleneck must be an int"):
    models.TTLMLP(factorization="tucker", bottleneck=10, rngs=nnx.Rngs(0))


def test_ttl_gap_stage_2_takes_each_options_best_validation_rate(tmp_path):
  from configs import ttl_gap_mnist as gap

  select = gap.build("mnist", "select")
  runs = expand(select)
  for _, run in runs:
    validate(run)
  assert {run.dataset.validation_examples for _, run in runs} == {10_000}
  rows, best = [], {}
  for i, (option, fields) in enumerate(gap.OPTIONS.items()):
    rates = gap.rates_of(fields)
    best[option] = rates[i % len(rates)]
    for rate in rates:
      key = gap.one_run_key(select, gap.sweep_group(
          fields, rate, gap.SELECT_TEACHER_RATE, [0]))
      rows.append({"key": key, "status": "ok",
                   "test_accuracy": 0.9 + 0.05 * (rate == best[option])})
  with pytest.raises(ValueError, match="run the 'select' preset first"):
    gap.chosen_rates(select, tmp_path)
  rundir.write_rows(tmp_path / "results.csv", rows)
  assert gap.chosen_rates(select, tmp_path) == best


def test_a_sweep_checks_its_teachers_before_any_compute(mnist_dir, tmp_path):
  config = ttl(mnist_dir, **{"model.rank": (28, 28, 300)})
  student = {"distill_weight": [0.5], "teacher": ["model.factorization=dense"],
             "seed": [0]}
  config.sweep = (student, {"model.factorization": ["dense"], "seed": [0]})
  with pytest.raises(ValueError, match="is not an earlier run of this sweep"):
    sweep.run_sweep(config, tmp_path / "late")
  config.sweep = ({"model.factorization": ["dense"], "seed": [0]}, student)
  with pytest.raises(ValueError, match="without --vectorize"):
    sweep.run_sweep(config, tmp_path / "vectorized", vectorize=True)
  config.model.init = "teacher"
  config.teacher = "model.rank=(28, 28, 100)"
  with pytest.raises(ValueError, match="decomposes a dense twin"):
    validate(config)
  assert not (tmp_path / "late").exists()
