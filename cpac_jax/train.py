"""Training: optimizer, jit-compiled train/eval steps, train_and_evaluate.

One train loop for every experiment. An epoch runs as a few compiled calls,
each a `jax.lax.scan` over `steps_per_call` steps, so batch size 1 (as the
CPAC paper trains) costs one Python dispatch per thousand steps, not per step.
"""

import json
import logging as logging_std
import math
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from cpac_jax import data, layers, models

__all__ = ["count_factorized", "make_optimizer", "make_step",
           "train_and_evaluate"]

OPTIMIZERS = {"adam": optax.adam, "adamw": optax.adamw, "sgd": optax.sgd,
              "momentum": lambda learning_rate: optax.sgd(learning_rate, 0.9)}
NUM_CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10}


class _DropOrbaxInfo(logging_std.Filter):
  """Orbax logs every checkpoint step at INFO; keep its warnings only."""

  def filter(self, record):
    return record.levelno >= logging_std.WARNING or "/orbax/" not in (
        record.pathname or "")


logging_std.getLogger("absl").addFilter(_DropOrbaxInfo())


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int
                   ) -> optax.GradientTransformation:
  """The optax optimizer `config.optimizer` names, with its schedule:
  "constant", or "cosine" decay to 0 over the run."""
  name = config.optimizer.name
  if name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer.name {name!r}; choose one of "
                     f"{tuple(OPTIMIZERS)}")
  learning_rate = config.optimizer.learning_rate
  schedule = config.optimizer.get("schedule", "constant")
  if schedule == "cosine":
    learning_rate = optax.cosine_decay_schedule(
        learning_rate, config.num_epochs * steps_per_epoch)
  elif schedule != "constant":
    raise ValueError(f"unknown optimizer.schedule {schedule!r}; choose one "
                     "of ('constant', 'cosine')")
  return OPTIMIZERS[name](learning_rate=learning_rate)


def count_factorized(model: nnx.Module) -> tuple[int, int]:
  """(weights of the factorized layers, weights of their dense twins):
  bias excluded, so the ratio is the papers' per-layer compression."""
  ours = dense = 0
  for _, node in nnx.iter_graph(model):
    if isinstance(node, (layers.CPConv, layers.TuckerConv)):
      dense += (math.prod(node.kernel_size) * node.in_features
                * node.out_features)
    elif isinstance(node, layers.TuckerDense):
      dense += node.in_features * node.out_features
    else:
      continue
    bias = math.prod(node.bias.shape) if node.bias is not None else 0
    ours += layers.count_params(node) - bias
  return ours, dense


def _normalize(images: jax.Array, config) -> jax.Array:
  mean = jnp.asarray(config.dataset.mean, jnp.float32)
  std = jnp.asarray(config.dataset.std, jnp.float32)
  return (images.astype(jnp.float32) / 255.0 - mean) / std


def _loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def make_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation):
  """One optimisation step on a normalised batch, as a pure function
  (params, rest, opt_state, x, y) -> (params, rest, opt_state, loss,
  logits); `rest` is the model's non-parameter state (batch-norm stats)."""

  def loss_fn(params, rest, x, y):
    model = nnx.merge(graphdef, params, rest, copy=True)
    logits = model(x)
    _, _, rest = nnx.split(model, nnx.Param, ...)
    return _loss(logits, y).mean(), (logits, rest)

  def step(params, rest, opt_state, x, y):
    (loss, (logits, rest)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params, rest, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, rest, opt_state, loss, logits

  return step


def _make_steps(config, graphdef, eval_graphdef, tx, images, labels):
  """The compiled train chunk and eval pass, closed over the train data."""
  batch_size = config.batch_size
  step_fn = make_step(graphdef, tx)

  def train_step(carry, step):
    params, rest, opt_state, order = carry
    index = jax.lax.dynamic_slice_in_dim(order, step * batch_size, batch_size)
    x, y = _normalize(images[index], config), labels[index]
    params, rest, opt_state, loss, logits = step_fn(params, rest, opt_state,
                                                    x, y)
    correct = jnp.sum(jnp.argmax(logits, -1) == y)
    return (params, rest, opt_state, order), (loss, correct)

  @jax.jit
  def train_chunk(params, rest, opt_state, order, steps):
    (params, rest, opt_state, _), (losses, correct) = jax.lax.scan(
        train_step, (params, rest, opt_state, order), steps)
    return params, rest, opt_state, jnp.sum(losses), jnp.sum(correct)

  @jax.jit
  def evaluate(params, rest, x_all, y_all, mask):
    model = nnx.merge(eval_graphdef, params, rest)

    def body(totals, batch):
      x, y, m = batch
      logits = model(_normalize(x, config))
      loss = jnp.sum(_loss(logits, y) * m)
      correct = jnp.sum((jnp.argmax(logits, -1) == y) * m)
      return (totals[0] + loss, totals[1] + correct), None

    (loss, correct), _ = jax.lax.scan(body, (0.0, 0.0), (x_all, y_all, mask))
    return loss, correct

  return train_chunk, evaluate


def _eval_batches(split: data.Split, batch_size: int):
  """The test set padded to whole batches: (B, bs, ...) arrays and a mask."""
  n = len(split.labels)
  batches = math.ceil(n / batch_size)
  pad = batches * batch_size - n
  x = np.concatenate([split.images, np.zeros((pad,) + split.images.shape[1:],
                                             np.uint8)])
  y = np.concatenate([split.labels, np.zeros((pad,), np.int32)])
  mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
  shape = lambda a: a.reshape((batches, batch_size) + a.shape[1:])
  return shape(x), shape(y), shape(mask)


class _MetricWriter:
  """Per-epoch metrics to metrics.jsonl and TensorBoard event files."""

  def __init__(self, workdir: Path):
    from tensorboardX import SummaryWriter  # import only when writing

    self._path = workdir / "metrics.jsonl"
    self._tensorboard = SummaryWriter(str(workdir / "tensorboard"))

  def write(self, step: int, metrics: dict) -> None:
    with open(self._path, "a") as f:
      f.write(json.dumps({"step": step, **metrics}) + "\n")
    for name, value in metrics.items():
      self._tensorboard.add_scalar(name, value, step)
    self._tensorboard.flush()

  def close(self) -> None:
    self._tensorboard.close()


def _history(workdir: Path, up_to_epoch: int) -> list[dict]:
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  rows = [json.loads(line) for line in path.read_text().splitlines() if line]
  return [r for r in rows if r["epoch"] <= up_to_epoch]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path,
                       progress: Callable[[str], None] | None = None) -> dict:
  """Train the model `config` describes, evaluating on the test split after
  every epoch; write config.json, metrics, checkpoints and result.json into
  `workdir`, resuming from its last checkpoint if it holds one.

  Returns:
    The run's results row (see `cpac_jax.sweep.COLUMNS`).
  """
  from cpac_jax.config import validate  # imports train: import it late

  validate(config)
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  log = progress or logging.info

  dataset = config.dataset
  train_split = data.load(dataset.name, "train", dataset.get("data_dir"))
  test_split = data.load(dataset.name, "test", dataset.get("data_dir"))
  if config.get("num_train_examples"):
    train_split = data.Split(*(a[:config.num_train_examples]
                               for a in train_split))
  if config.get("num_test_examples"):
    test_split = data.Split(*(a[:config.num_test_examples]
                              for a in test_split))
  num_train = len(train_split.labels)
  steps_per_epoch = num_train // config.batch_size
  if steps_per_epoch < 1:
    raise ValueError(
        f"batch_size {config.batch_size} exceeds the {num_train} training "
        "examples")

  key = jax.random.key(config.seed)
  init_key, data_key = jax.random.split(key)
  model = models.build(config.model, train_split.images.shape[1:],
                       NUM_CLASSES[dataset.name],
                       nnx.Rngs(params=init_key))
  num_params = layers.count_params(model)
  dense_config = config.model.copy_and_resolve_references()
  dense_config.factorization = "dense"
  dense_params = layers.count_params(nnx.eval_shape(lambda: models.build(
      dense_config, train_split.images.shape[1:], NUM_CLASSES[dataset.name],
      nnx.Rngs(0))))
  factorized, factorized_dense = count_factorized(model)

  tx = make_optimizer(config, steps_per_epoch)
  model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  model.eval()
  eval_graphdef = nnx.split(model, nnx.Param, ...)[0]
  opt_state = tx.init(params)
  images = jnp.asarray(train_split.images)
  labels = jnp.asarray(train_split.labels)
  train_chunk, evaluate = _make_steps(config, graphdef, eval_graphdef, tx,
                                      images, labels)
  test_batches = tuple(jnp.asarray(a) for a in _eval_batches(
      test_split, config.get("eval_batch_size", 1000)))

  checkpoints = ocp.CheckpointManager(
      (workdir / "checkpoints").absolute(),
      options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))
  start_epoch = 0
  if checkpoints.latest_step() is not None:
    state = checkpoints.restore(
        checkpoints.latest_step(), args=ocp.args.StandardRestore(
            {"params": params, "rest": rest, "opt_state": opt_state}))
    params, rest, opt_state = state["params"], state["rest"], state["opt_state"]
    start_epoch = checkpoints.latest_step()
    log(f"resuming from the checkpoint after epoch {start_epoch}")
  history = _history(workdir, start_epoch)
  writer = _MetricWriter(workdir)

  steps_per_call = min(config.get("steps_per_call", 1000), steps_per_epoch)
  train_seconds = sum(r["epoch_seconds"] for r in history)
  for epoch in range(start_epoch + 1, config.num_epochs + 1):
    order = jax.random.permutation(jax.random.fold_in(data_key, epoch),
                                   num_train)
    start, loss_sum, correct_sum = time.perf_counter(), 0.0, 0
    last_log = start
    for first in range(0, steps_per_epoch, steps_per_call):
      steps = jnp.arange(first, min(first + steps_per_call, steps_per_epoch))
      params, rest, opt_state, loss, correct = train_chunk(
          params, rest, opt_state, order, steps)
      loss_sum, correct_sum = loss_sum + loss, correct_sum + correct
      now = time.perf_counter()
      if now - last_log > 30:
        done = first + len(steps)
        log(f"epoch {epoch} step {done}/{steps_per_epoch} loss "
            f"{float(loss_sum) / done:.4f} "
            f"{done * config.batch_size / (now - start):.0f} examples/s")
        last_log = now
    loss_sum, correct_sum = float(loss_sum), int(correct_sum)
    epoch_seconds = time.perf_counter() - start
    train_seconds += epoch_seconds
    test_loss, test_correct = evaluate(params, rest, *test_batches)
    num_test = len(test_split.labels)
    seen = steps_per_epoch * config.batch_size
    metrics = {
        "epoch": epoch,
        "train_loss": loss_sum / steps_per_epoch,
        "train_accuracy": correct_sum / seen,
        "test_loss": float(test_loss) / num_test,
        "test_accuracy": float(test_correct) / num_test,
        "epoch_seconds": epoch_seconds,
        "examples_per_second": seen / epoch_seconds,
    }
    if not all(math.isfinite(v) for v in metrics.values()):
      raise FloatingPointError(
          f"non-finite metrics after epoch {epoch}: {metrics}")
    history.append(metrics)
    writer.write(epoch * steps_per_epoch, metrics)
    log(f"epoch {epoch}/{config.num_epochs}: train loss "
        f"{metrics['train_loss']:.4f} acc {metrics['train_accuracy']:.4f}, "
        f"test loss {metrics['test_loss']:.4f} acc "
        f"{metrics['test_accuracy']:.4f}, "
        f"{metrics['examples_per_second']:.0f} examples/s")
    checkpoints.save(epoch, args=ocp.args.StandardSave(
        {"params": params, "rest": rest, "opt_state": opt_state}))
  checkpoints.wait_until_finished()
  checkpoints.close()
  writer.close()

  rank = config.model.rank
  result = {
      "experiment": config.get("name", ""),
      "dataset": dataset.name,
      "model": config.model.name,
      "factorization": config.model.factorization,
      "rank": ("" if config.model.factorization == "dense" else json.dumps(
          list(rank) if isinstance(rank, tuple) else rank)),
      "params": num_params,
      "compression": dense_params / num_params,
      "layer_params": factorized,
      "layer_compression": (factorized_dense / factorized
                            if factorized else 1.0),
      "seed": config.seed,
      "epochs": config.num_epochs,
      "test_accuracy": history[-1]["test_accuracy"],
      "best_test_accuracy": max(r["test_accuracy"] for r in history),
      "train_seconds": train_seconds,
      "status": "ok",
  }
  (workdir / "result.json").write_text(json.dumps(result, indent=2))
  return result
