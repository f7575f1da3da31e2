"""Each extension of the training loop: the loop with it ends where the
same training written out by hand, step by step, ends."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cpac_jax import compression, data, extensions, models, optimizers, train
from cpac_jax.config import build_model, run_key, teacher_config
from cpac_jax.vectorized import split_modes
from tests.test_compress import _cnn
from tests.test_teacher import ttl


def _by_hand(config, model, objective=extensions.cross_entropy,
             arrays=(), tap=None):
  """`config`'s training of `model`, one jitted step at a time, as the
  loop's docstring says it trains: the same data order, optimizer and
  objective. Returns the final params and the summed tap."""
  train_split, _ = data.load_splits(config.dataset)
  data_key = jax.random.split(jax.random.key(config.seed))[1]
  steps = len(train_split.labels) // config.batch_size
  tx = optimizers.make_optimizer(config.optimizer, config.num_epochs * steps)
  graphdef, _, (params, rest) = split_modes(model)
  step = jax.jit(train.make_step(graphdef, tx, objective))
  opt_state, summed = tx.init(params), None
  for epoch in range(1, config.num_epochs + 1):
    order = np.asarray(train.epoch_order(data_key, epoch,
                                         len(train_split.labels)))
    for i in range(steps):
      index = order[i * config.batch_size:(i + 1) * config.batch_size]
      x = data.normalize(train_split.images[index], config.dataset.mean,
                         config.dataset.std)
      y = train_split.labels[index]
      target = (y, *(a[index] for a in arrays)) if arrays else y
      params, rest, opt_state, _, _, grads = step(params, rest, opt_state,
                                                  x, target)
      if tap is not None:
        summed = tap(grads) if summed is None else jax.tree.map(
            jnp.add, summed, tap(grads))
  return params, summed


def _init_key(config):
  return jax.random.split(jax.random.key(config.seed))[0]


def _assert_same_params(loop_model, params, before):
  """The loop's final parameters equal `params` (up to the rounding a
  scan of steps may order differently), and differ from `before`."""
  loop = nnx.state(loop_model, nnx.Param)
  moved = max(float(jnp.abs(a - b).max()) for a, b in zip(
      jax.tree.leaves(loop), jax.tree.leaves(before)))
  assert moved > 1e-3  # training moved them: the check below can fail
  for a, b in zip(jax.tree.leaves(loop), jax.tree.leaves(params),
                  strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _teacher(config, runs):
  """Trains `config`'s teacher where the loop looks for it; returns it."""
  teacher = teacher_config(config)
  train.train_and_evaluate(teacher,
                           runs / f"teacher-{run_key(teacher)}")
  model, _ = train.restore(runs / f"teacher-{run_key(teacher)}")
  return model, teacher


def _ttl(data_dir, **overrides):
  return ttl(data_dir, num_epochs=1, **{"model.rank": (8, 8, 20),
                                        **overrides})


def test_no_extension_the_loop_is_the_steps_by_hand(mnist_dir, tmp_path):
  config = _ttl(mnist_dir, **{"model.factorization": "tucker"})
  model = build_model(config, None, _init_key(config))
  params, _ = _by_hand(config, model)
  train.train_and_evaluate(config, tmp_path / "run")
  _assert_same_params(train.restore(tmp_path / "run")[0], params,
                      nnx.state(model, nnx.Param))


def test_gradient_tap_sums_tap_of_every_steps_gradients(mnist_dir, tmp_path):
  config = _ttl(mnist_dir, **{"model.factorization": "tucker"})
  tap = lambda grads: jax.tree.map(jnp.abs, grads)
  model = build_model(config, None, _init_key(config))
  params, summed = _by_hand(config, model, tap=tap)
  outcome, = train.train_runs([(config, tmp_path / "run")], tap=tap)
  _assert_same_params(train.restore(tmp_path / "run")[0], params,
                      nnx.state(model, nnx.Param))
  for a, b in zip(jax.tree.leaves(outcome.tap), jax.tree.leaves(summed),
                  strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_from_teacher_starts_from_the_decomposed_teacher(mnist_dir,
                                                         tmp_path):
  config = _ttl(mnist_dir, **{"model.factorization": "tucker",
                              "model.init": "teacher",
                              "teacher": "model.factorization=dense"})
  teacher, _ = _teacher(config, tmp_path / "runs")
  student = models.from_teacher(
      build_model(config, None, _init_key(config)), teacher)
  params, _ = _by_hand(config, student)
  train.train_and_evaluate(config, tmp_path / "runs" / "student")
  _assert_same_params(train.restore(tmp_path / "runs" / "student")[0],
                      params, nnx.state(student, nnx.Param))


def test_distillation_trains_on_the_teachers_logits(mnist_dir, tmp_path):
  config = _ttl(mnist_dir, **{"model.factorization": "tucker",
                              "distill_weight": 0.5,
                              "distill_temperature": 2.0,
                              "teacher": "model.factorization=dense"})
  teacher, teacher_run = _teacher(config, tmp_path / "runs")
  train_split, _ = data.load_splits(config.dataset)
  logits = np.asarray(teacher(data.normalize(
      train_split.images, teacher_run.dataset.mean, teacher_run.dataset.std)))
  model = build_model(config, None, _init_key(config))
  params, _ = _by_hand(config, model, train.distillation_loss(0.5, 2.0),
                       arrays=(logits,))
  train.train_and_evaluate(config, tmp_path / "runs" / "student")
  _assert_same_params(train.restore(tmp_path / "runs" / "student")[0],
                      params, nnx.state(model, nnx.Param))


def test_compress_teacher_starts_from_the_compressed_teacher(mnist_dir,
                                                             tmp_path):
  # SGD: a conv bias before batch norm gets gradients of rounding noise
  # alone, which Adam scales up to whole steps.
  config = _cnn(mnist_dir, **{"compress.factorization": "tucker",
                              "compress.budget": 0.3, "num_epochs": 1,
                              "unroll": True,  # looped, it rounds 3e-5 apart
                              "teacher": "num_epochs=2",
                              "optimizer.name": "sgd",
                              "optimizer.learning_rate": 0.05})
  teacher, _ = _teacher(config, tmp_path / "runs")
  block = config.compress
  ranks = compression.allocate(teacher, block.budget, block.factorization,
                               exclude=tuple(block.exclude),
                               allocation=block.allocation)
  student, _ = compression.compress(
      teacher, key=_init_key(config),
      **extensions.compress_kwargs(config, ranks))
  params, _ = _by_hand(config, student)
  train.train_and_evaluate(config, tmp_path / "runs" / "student")
  _assert_same_params(train.restore(tmp_path / "runs" / "student")[0],
                      params, nnx.state(student, nnx.Param))
  # compression.json: the student before fine-tuning, on the test set
  _, test_split = data.load_splits(config.dataset)
  predicted = np.argmax(student(data.normalize(
      test_split.images, config.dataset.mean, config.dataset.std)), -1)
  before = json.loads((tmp_path / "runs" / "student" / "compression.json"
                       ).read_text())["before_fine_tuning"]
  assert before["evaluated_on"] == "test"
  assert before["examples"] == len(test_split.labels)
  assert abs(before["accuracy"] - np.mean(predicted == test_split.labels)
             ) <= 1 / len(test_split.labels)  # one image on a rounding tie


def test_combinations_are_refused_in_one_place(mnist_dir, tmp_path):
  config = _ttl(mnist_dir, **{"model.factorization": "tucker"})
  distilled = _ttl(mnist_dir, **{"distill_weight": 0.5,
                                 "teacher": "model.factorization=dense"})
  for runs, kwargs, message in (
      ([config, config], {"tap": True}, "take no tap"),
      ([config, config], {"state_dir": False}, "need a state_dir"),
      ([distilled, distilled], {"names": ["a", "b"]},
       "run a learns from a teacher"),
  ):
    with pytest.raises(ValueError, match=message):
      extensions.check(runs, together=True, **kwargs)
  extensions.check([distilled], together=False, tap=True)  # alone: fine
  with pytest.raises(ValueError, match="take no tap"):
    train.train_runs([(config, tmp_path / "a"), (config, tmp_path / "b")],
                     tmp_path / "state", tap=lambda grads: grads)
  assert not (tmp_path / "a").exists()  # refused before any compute
