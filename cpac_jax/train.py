"""Training: optimizer, jit-compiled train/eval steps, train_and_evaluate.

One train loop for every experiment. An epoch runs as a few compiled calls,
each a `jax.lax.scan` over `steps_per_call` steps, so batch size 1 (as the
CPAC paper trains) costs one Python dispatch per thousand steps, not per step.
"""

import contextlib
import json
import logging as logging_std
import math
import os
import signal
import threading
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
from jax.sharding import NamedSharding, PartitionSpec

from cpac_jax import data, layers, models

__all__ = ["Diverged", "Preempted", "build_model", "count_factorized",
           "epoch_metrics", "epoch_order", "failed_row",
           "initialize_distributed", "make_evaluation",
           "make_optimizer", "make_step", "normalize", "restore", "result_row",
           "train_and_evaluate"]

class Diverged(FloatingPointError):
  """The loss became NaN or infinite; the message names the step."""


class Preempted(RuntimeError):
  """SIGTERM arrived; the run saved a checkpoint and stopped."""


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
  "constant", or "cosine" decay to 0 over the run (checked by
  `cpac_jax.config.validate`)."""
  name = config.optimizer.name
  if name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer.name {name!r}; choose one of "
                     f"{tuple(OPTIMIZERS)}")
  learning_rate = config.optimizer.learning_rate
  if config.optimizer.get("schedule", "constant") == "cosine":
    learning_rate = optax.cosine_decay_schedule(
        learning_rate, config.num_epochs * steps_per_epoch)
  return OPTIMIZERS[name](learning_rate=learning_rate)


def initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """Join the multi-process job `config.distributed` asks for, once, before
  any computation: `jax.distributed.initialize` with the fields that are
  set. Every process then runs the same program on its share of each batch,
  and only process 0 writes files other than checkpoints."""
  settings = config.get("distributed") or {}
  if not settings.get("initialize") or jax.distributed.is_initialized():
    return
  address = settings.get("coordinator_address")
  count, index = settings.get("num_processes"), settings.get("process_id")
  if address is not None and not address.rpartition(":")[2].isdigit():
    raise ValueError(f"distributed.coordinator_address {address!r} is not "
                     "host:port")
  if count is not None and (count < 1 or index is None
                            or not 0 <= index < count):
    raise ValueError(
        f"distributed.process_id {index!r} must be in 0..{count - 1} for "
        f"distributed.num_processes {count}")
  jax.distributed.initialize(address, count, index)


def _writes_files() -> bool:
  """Whether this process writes configs, metrics and results."""
  return jax.process_index() == 0


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


def normalize(images: jax.Array, config) -> jax.Array:
  """uint8 images -> the float inputs the config's model trains on."""
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


def _make_steps(config, graphdef, eval_graphdef, tx, images, labels,
                batch_sharding):
  """The compiled train chunk and eval pass, closed over the train data;
  each batch is split over the devices of `batch_sharding`."""
  batch_size = config.batch_size
  step_fn = make_step(graphdef, tx)

  def train_step(carry, step):
    params, rest, opt_state, order = carry
    index = jax.lax.dynamic_slice_in_dim(order, step * batch_size, batch_size)
    x, y = normalize(images[index], config), labels[index]
    x, y = jax.lax.with_sharding_constraint((x, y), batch_sharding)
    params, rest, opt_state, loss, logits = step_fn(params, rest, opt_state,
                                                    x, y)
    correct = jnp.sum(jnp.argmax(logits, -1) == y)
    return (params, rest, opt_state, order), (loss, correct)

  @jax.jit
  def train_chunk(params, rest, opt_state, order, steps):
    """Run `steps`; also return the first step whose loss wasn't finite
    (-1 if none)."""
    (params, rest, opt_state, _), (losses, correct) = jax.lax.scan(
        train_step, (params, rest, opt_state, order), steps)
    finite = jnp.isfinite(losses)
    bad = jnp.where(jnp.all(finite), -1, steps[jnp.argmin(finite)])
    return (params, rest, opt_state, jnp.sum(losses), jnp.sum(correct), bad)

  return train_chunk, jax.jit(make_evaluation(config, eval_graphdef))


def make_evaluation(config, eval_graphdef: nnx.GraphDef):
  """(params, rest, x, y, mask) -> (summed loss, correct count) over test
  batches (B, bs, ...) of uint8 images, padding masked out (`_eval_batches`)."""

  def evaluate(params, rest, x_all, y_all, mask):
    model = nnx.merge(eval_graphdef, params, rest)

    def body(totals, batch):
      x, y, m = batch
      logits = model(normalize(x, config))
      loss = jnp.sum(_loss(logits, y) * m)
      correct = jnp.sum((jnp.argmax(logits, -1) == y) * m)
      return (totals[0] + loss, totals[1] + correct), None

    (loss, correct), _ = jax.lax.scan(body, (0.0, 0.0), (x_all, y_all, mask))
    return loss, correct

  return evaluate


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
  """The metrics of epochs 1..`up_to_epoch`; metrics.jsonl is cut back to
  them, dropping any epoch written after the checkpoint now resumed."""
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  rows = [json.loads(line) for line in path.read_text().splitlines() if line]
  kept = [r for r in rows if r["epoch"] <= up_to_epoch]
  if len(kept) != len(rows) and _writes_files():
    temp = path.with_suffix(".tmp")
    temp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(temp, path)
  return kept


@contextlib.contextmanager
def _sigterm_requests_stop():
  """While inside, SIGTERM sets the returned event instead of killing."""
  stop = threading.Event()
  if threading.current_thread() is not threading.main_thread():
    yield stop  # signals reach the main thread only
    return
  previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
  try:
    yield stop
  finally:
    signal.signal(signal.SIGTERM, previous)


def _check_workdir(workdir: Path, config: ml_collections.ConfigDict) -> None:
  """Refuse a workdir that holds a run of a different config."""
  from cpac_jax.config import computed_fields

  path = workdir / "config.json"
  if not path.exists():
    return
  old = computed_fields(ml_collections.ConfigDict(json.loads(
      path.read_text())))
  new = computed_fields(config)
  if old != new:
    differ = sorted(_differences(old, new))
    raise ValueError(
        f"workdir {workdir} holds a run of a different config (fields "
        f"{', '.join(differ)} differ); resume it with the same config, or "
        "use a new workdir")


def _differences(old: dict, new: dict, prefix: str = "") -> set[str]:
  fields = set()
  for key in set(old) | set(new):
    a, b = old.get(key), new.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      fields |= _differences(a, b, f"{prefix}{key}.")
    elif a != b:
      fields.add(prefix + key)
  return fields


def _load_splits(config) -> tuple[data.Split, data.Split]:
  dataset = config.dataset
  train_split = data.load(dataset.name, "train", dataset.get("data_dir"))
  test_split = data.load(dataset.name, "test", dataset.get("data_dir"))
  if config.get("num_train_examples"):
    train_split = data.Split(*(a[:config.num_train_examples]
                               for a in train_split))
  if config.get("num_test_examples"):
    test_split = data.Split(*(a[:config.num_test_examples]
                              for a in test_split))
  return train_split, test_split


def build_model(config, input_shape, key=None) -> nnx.Module:
  """The config's model for inputs (H, W, C), initialised from `key`."""
  rngs = nnx.Rngs(params=key) if key is not None else nnx.Rngs(0)
  return models.build(config.model, input_shape,
                      NUM_CLASSES[config.dataset.name], rngs)


def restore(workdir: str | Path
            ) -> tuple[nnx.Module, ml_collections.ConfigDict]:
  """The model of a run's workdir, with its last checkpoint's parameters and
  statistics, in eval mode; and the run's config."""
  workdir = Path(workdir)
  config = ml_collections.ConfigDict(json.loads(
      (workdir / "config.json").read_text()))
  shape = {"cifar10": (32, 32, 3)}.get(config.dataset.name, (28, 28, 1))
  model = build_model(config, shape)
  model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  with ocp.CheckpointManager((workdir / "checkpoints").absolute()) as manager:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"{workdir} holds no checkpoint")
    target = {"params": params, "rest": rest}
    state = manager.restore(step, args=ocp.args.PyTreeRestore(
        target, partial_restore=True,
        restore_args=ocp.checkpoint_utils.construct_restore_args(target)))
  model = nnx.merge(graphdef, state["params"], state["rest"])
  model.eval()
  return model, config


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path,
                       progress: Callable[[str], None] | None = None) -> dict:
  """Train the model `config` describes, evaluating on the test split after
  every epoch; write config.json, metrics, checkpoints and result.json into
  `workdir`.

  Resumable: the full state (parameters, optimizer state, batch-norm
  statistics, position in the epoch, partial sums) is checkpointed after
  every epoch and on SIGTERM; data order and initialisation derive from
  `config.seed` and the epoch. Rerun on the same workdir, it resumes from
  the last checkpoint and ends with the same parameters, bit for bit on the
  CPU, as an uninterrupted run.

  Raises:
    ValueError: a bad config, or a workdir holding a different config's run.
    data.DataNotFoundError: the dataset isn't in the data dir.
    Diverged: the loss became non-finite; names the step, keeps the last
      good checkpoint.
    Preempted: SIGTERM arrived; a checkpoint was saved first.

  Returns:
    The run's results row (see `cpac_jax.sweep.COLUMNS`).
  """
  from cpac_jax.config import validate  # imports train: import it late

  initialize_distributed(config)
  validate(config)
  workdir = Path(workdir)
  _check_workdir(workdir, config)
  log = progress or logging.info
  train_split, test_split = _load_splits(config)
  num_train = len(train_split.labels)
  steps_per_epoch = num_train // config.batch_size
  if steps_per_epoch < 1:
    raise ValueError(
        f"batch_size {config.batch_size} exceeds the {num_train} training "
        "examples")
  workdir.mkdir(parents=True, exist_ok=True)
  if _writes_files():
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))

  init_key, data_key = jax.random.split(jax.random.key(config.seed))
  input_shape = train_split.images.shape[1:]
  model = build_model(config, input_shape, init_key)
  counts = _counts(config, model, input_shape)

  tx = make_optimizer(config, steps_per_epoch)
  model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  model.eval()
  eval_graphdef = nnx.split(model, nnx.Param, ...)[0]
  # Data parallel over every device: batches split, the rest replicated.
  mesh = jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  replicated = NamedSharding(mesh, PartitionSpec())
  train_chunk, evaluate = _make_steps(
      config, graphdef, eval_graphdef, tx,
      jax.device_put(train_split.images, replicated),
      jax.device_put(train_split.labels, replicated),
      NamedSharding(mesh, PartitionSpec("data")))
  test_batches = jax.device_put(
      _eval_batches(test_split, config.eval_batch_size), replicated)
  num_test = len(test_split.labels)

  # Checkpoint step = global train step; (epoch, step) says where in the
  # epoch it was taken, step == steps_per_epoch once the epoch is evaluated.
  state = {"params": params, "rest": rest, "opt_state": tx.init(params),
           "position": np.zeros(2, np.int64),
           "sums": _zero_sums()}
  checkpoints, state, epoch, step = _resume(workdir / "checkpoints", state,
                                            steps_per_epoch, log)
  for name in ("params", "rest", "opt_state"):
    state[name] = jax.device_put(state[name], replicated)
  history = _history(workdir, epoch - 1)
  writer = _MetricWriter(workdir) if _writes_files() else None
  steps_per_call = min(config.steps_per_call, steps_per_epoch)

  def save(epoch, step):
    state["position"] = np.array([epoch, step], np.int64)
    checkpoints.save((epoch - 1) * steps_per_epoch + step,
                     args=ocp.args.StandardSave(state))

  with _sigterm_requests_stop() as stop:
    while epoch <= config.num_epochs:
      order = jax.device_put(np.asarray(epoch_order(data_key, epoch,
                                                    num_train)), replicated)
      if step == 0:
        state["sums"] = _zero_sums()
      start = last_log = time.perf_counter()
      seconds = float(state["sums"]["seconds"])
      while step < steps_per_epoch:
        # Chunks stay on a fixed grid of the epoch, so a resumed run
        # compiles and runs exactly the chunks an uninterrupted one does.
        end = min((step // steps_per_call + 1) * steps_per_call,
                  steps_per_epoch)
        (state["params"], state["rest"], state["opt_state"], loss, correct,
         bad) = train_chunk(state["params"], state["rest"],
                            state["opt_state"], order,
                            jax.device_put(np.arange(step, end), replicated))
        if int(bad) >= 0:
          checkpoints.wait_until_finished()
          raise Diverged(
              f"loss became non-finite at epoch {epoch}, step {int(bad)} "
              f"(global step {(epoch - 1) * steps_per_epoch + int(bad)}); "
              f"the last good checkpoint, at global step "
              f"{checkpoints.latest_step()}, is kept in {workdir}")
        sums = state["sums"]
        sums["loss"] = np.asarray(sums["loss"] + np.asarray(loss))
        sums["correct"] = np.asarray(sums["correct"] + np.asarray(correct))
        step = end
        now = time.perf_counter()
        sums["seconds"] = np.asarray(seconds + now - start)
        if stop.is_set() and step < steps_per_epoch:
          save(epoch, step)
          checkpoints.wait_until_finished()
          raise Preempted(
              f"SIGTERM: saved epoch {epoch}, step {step} in {workdir}; "
              "rerun the same command to resume")
        if now - last_log > 30:
          log(f"epoch {epoch} step {step}/{steps_per_epoch} loss "
              f"{float(sums['loss']) / step:.4f} "
              f"{(step * config.batch_size) / float(sums['seconds']):.0f} "
              "examples/s (this epoch)")
          last_log = now
      test_loss, test_correct = evaluate(state["params"], state["rest"],
                                         *test_batches)
      sums = state["sums"]
      metrics = epoch_metrics(
          epoch, float(sums["loss"]), int(sums["correct"]), float(test_loss),
          float(test_correct), float(sums["seconds"]), steps_per_epoch,
          config.batch_size, num_test)
      history.append(metrics)
      if writer:
        writer.write(epoch * steps_per_epoch, metrics)
      log(f"epoch {epoch}/{config.num_epochs}: train loss "
          f"{metrics['train_loss']:.4f} acc {metrics['train_accuracy']:.4f}, "
          f"test loss {metrics['test_loss']:.4f} acc "
          f"{metrics['test_accuracy']:.4f}, "
          f"{metrics['examples_per_second']:.0f} examples/s")
      save(epoch, steps_per_epoch)
      if stop.is_set() and epoch < config.num_epochs:
        checkpoints.wait_until_finished()
        raise Preempted(f"SIGTERM: saved epoch {epoch} in {workdir}; rerun "
                        "the same command to resume")
      epoch, step = epoch + 1, 0
  checkpoints.wait_until_finished()
  checkpoints.close()
  if writer:
    writer.close()

  result = result_row(config, counts, history)
  if _writes_files():
    (workdir / "result.json").write_text(json.dumps(result, indent=2))
  return result


def _resume(directory: Path, state: dict, steps_per_epoch: int, log):
  """The checkpoint manager of `directory`; and `state`, with the (epoch,
  step) to go on from, restored from its latest checkpoint if any."""
  checkpoints = ocp.CheckpointManager(
      directory.absolute(),
      options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
  epoch, step = 1, 0
  if checkpoints.latest_step() is not None:
    state = checkpoints.restore(checkpoints.latest_step(),
                                args=ocp.args.StandardRestore(state))
    epoch, step = (int(v) for v in state["position"])
    log(f"resuming at epoch {epoch}, step {step}/{steps_per_epoch}")
    if step == steps_per_epoch:
      epoch, step = epoch + 1, 0
  return checkpoints, state, epoch, step


def _zero_sums(runs: tuple[int, ...] = ()) -> dict:
  """An epoch's running sums, kept on the host: loss and correct count of
  each of `runs` (one run: shape ()), and the seconds they all took."""
  return {"loss": np.zeros(runs, np.float64),
          "correct": np.zeros(runs, np.int64),
          "seconds": np.zeros((), np.float64)}


def epoch_order(data_key: jax.Array, epoch: int, num_train: int) -> jax.Array:
  """The order of the training examples in `epoch` of a run."""
  return jax.random.permutation(jax.random.fold_in(data_key, epoch), num_train)


def epoch_metrics(epoch: int, train_loss: float, train_correct: int,
                  test_loss: float, test_correct: float, seconds: float,
                  steps_per_epoch: int, batch_size: int, num_test: int
                  ) -> dict:
  """An epoch's line of metrics.jsonl, from its sums."""
  seen = steps_per_epoch * batch_size
  return {
      "epoch": epoch,
      "train_loss": train_loss / steps_per_epoch,
      "train_accuracy": train_correct / seen,
      "test_loss": test_loss / num_test,
      "test_accuracy": test_correct / num_test,
      "epoch_seconds": seconds,
      "examples_per_second": seen / seconds,
  }


def _counts(config, model: nnx.Module, input_shape) -> dict:
  """The parameter counts of a run's results row."""
  dense_config = config.copy_and_resolve_references()
  dense_config.model.factorization = "dense"
  dense_params = layers.count_params(nnx.eval_shape(
      lambda: build_model(dense_config, input_shape)))
  num_params = layers.count_params(model)
  factorized, factorized_dense = count_factorized(model)
  return {"params": num_params, "compression": dense_params / num_params,
          "layer_params": factorized,
          "layer_compression": (factorized_dense / factorized
                                if factorized else 1.0)}


def failed_row(config) -> dict:
  """The results row of a run whose loss became non-finite."""
  return {"experiment": config.get("name", ""),
          "dataset": config.dataset.name, "model": config.model.name,
          "factorization": config.model.factorization, "seed": config.seed,
          "epochs": config.num_epochs, "status": "diverged"}


def result_row(config, counts: dict, history: list[dict]) -> dict:
  """A finished run's results row (see `cpac_jax.sweep.COLUMNS`)."""
  rank = config.model.rank
  return {
      "experiment": config.get("name", ""),
      "dataset": config.dataset.name,
      "model": config.model.name,
      "factorization": config.model.factorization,
      "rank": ("" if config.model.factorization == "dense" else json.dumps(
          list(rank) if isinstance(rank, tuple) else rank)),
      **counts,
      "seed": config.seed,
      "epochs": config.num_epochs,
      "test_accuracy": history[-1]["test_accuracy"],
      "best_test_accuracy": max(r["test_accuracy"] for r in history),
      "train_seconds": sum(r["epoch_seconds"] for r in history),
      "status": "ok",
  }
