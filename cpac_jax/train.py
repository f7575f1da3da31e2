"""Training: the compiled train and eval steps and the one epoch loop, for
one run or many trained together.

An epoch runs as a few compiled calls, each a `jax.lax.scan` over
`steps_per_call` steps, so batch size 1 (as the CPAC paper trains) costs one
Python dispatch per thousand steps, not per step. A run alone trains data
parallel over every device; runs trained together (`train_runs` with
several runs, `sweep --vectorize`) are stacked into one program
(`cpac_jax.vectorized`). Either way the same loop checkpoints, resumes,
logs and writes each run's workdir (`cpac_jax.rundir`).
"""

import contextlib
import ctypes
import functools
import hashlib
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from cpac_jax import (checkpoint, compression, data, distributed, models,
                      optimizers, rundir)
from cpac_jax.config import (build_model, compressing, has_teacher, run_key,
                             setting, teacher_config, validate)
from cpac_jax.vectorized import (Group, check_together, make_groups,
                                 split_modes)

__all__ = ["Diverged", "Outcome", "Preempted", "compiler_options",
           "distillation_loss", "epoch_metrics", "epoch_order",
           "eval_batches", "make_evaluation", "make_step", "restore",
           "reuse_host_memory", "train_and_evaluate", "train_runs"]


class Diverged(FloatingPointError):
  """The loss became NaN or infinite; the message names the step."""


class Preempted(RuntimeError):
  """SIGTERM or Ctrl-C arrived; the run saved a checkpoint and stopped."""


class Outcome(NamedTuple):
  """What `train_runs` returns for each run."""

  row: dict          # its results row (`rundir.result_row` / `failed_row`)
  error: str | None  # why it diverged, naming the step; None if it finished
  tap: Any           # the sum over every step of `tap(grads)`, if asked


def _loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def distillation_loss(weight: float, temperature: float):
  """(logits, (labels, teacher logits)) -> per-example loss
  (1 - weight) * cross-entropy + weight * T^2 * cross-entropy against the
  teacher's outputs softened by T (Hinton et al. 2015; T^2 keeps the soft
  term's gradients on the scale of the hard one's)."""

  def loss(logits, target):
    labels, teacher = target
    soft = optax.softmax_cross_entropy(logits / temperature,
                                       jax.nn.softmax(teacher / temperature))
    return ((1 - weight) * _loss(logits, labels)
            + weight * temperature**2 * soft)

  return loss


def make_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
              objective: Callable[[jax.Array, Any], jax.Array] = _loss):
  """One optimisation step on a normalised batch, as a pure function
  (params, rest, opt_state, x, y) -> (params, rest, opt_state, loss,
  logits, grads); `rest` is the model's non-parameter state (batch-norm
  statistics), `grads` the gradients the update used. `objective`
  (logits, y) -> per-example loss: by default cross-entropy, y the labels."""

  def loss_fn(params, rest, x, y):
    model = nnx.merge(graphdef, params, rest, copy=True)
    logits = model(x)
    _, _, rest = nnx.split(model, nnx.Param, ...)
    return objective(logits, y).mean(), (logits, rest)

  def step(params, rest, opt_state, x, y):
    (loss, (logits, rest)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params, rest, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, rest, opt_state, loss, logits, grads

  return step


def make_evaluation(config: ml_collections.ConfigDict,
                    eval_graphdef: nnx.GraphDef):
  """(params, rest, x, y, mask) -> (summed loss, correct count) over test
  batches (B, bs, ...) of uint8 images, padding masked out (`eval_batches`)."""

  def evaluate(params, rest, x_all, y_all, mask):
    model = nnx.merge(eval_graphdef, params, rest)

    def body(totals, batch):
      x, y, m = batch
      logits = model(data.normalize(x, config.dataset.mean,
                                    config.dataset.std))
      loss = jnp.sum(_loss(logits, y) * m)
      correct = jnp.sum((jnp.argmax(logits, -1) == y) * m)
      return (totals[0] + loss, totals[1] + correct), None

    (loss, correct), _ = jax.lax.scan(body, (0.0, 0.0), (x_all, y_all, mask),
                                      unroll=bool(config.get("unroll")))
    return loss, correct

  return evaluate


def eval_batches(split: data.Split, batch_size: int):
  """The test set padded to whole batches: (B, bs, ...) arrays and a mask;
  a test set smaller than `batch_size` is one batch of its own size."""
  n = len(split.labels)
  batch_size = min(batch_size, n)
  batches = math.ceil(n / batch_size)
  pad = batches * batch_size - n
  x = np.concatenate([split.images, np.zeros((pad,) + split.images.shape[1:],
                                             split.images.dtype)])
  y = np.concatenate([split.labels, np.zeros((pad,), np.int32)])
  mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
  shape = lambda a: a.reshape((batches, batch_size) + a.shape[1:])
  return shape(x), shape(y), shape(mask)


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


def _zero_sums(num_runs: int) -> dict:
  """An epoch's running sums, kept on the host: loss and correct count of
  each run, and the seconds they all took."""
  return {"loss": np.zeros(num_runs, np.float64),
          "correct": np.zeros(num_runs, np.int64),
          "seconds": np.zeros((), np.float64)}


class _StopRequest(threading.Event):
  """Set by SIGTERM or a first Ctrl-C; `name` says which arrived."""
  name = "SIGTERM"


@contextlib.contextmanager
def _signals_request_stop():
  """While inside, SIGTERM and a first Ctrl-C (SIGINT) set the returned
  event instead of killing: the loop saves a checkpoint and stops. A second
  Ctrl-C interrupts at once, as Ctrl-C does elsewhere."""
  stop = _StopRequest()
  if threading.current_thread() is not threading.main_thread():
    yield stop  # signals reach the main thread only
    return

  def request(signum, frame):
    if signum == signal.SIGINT and stop.is_set():
      signal.default_int_handler(signum, frame)
    stop.name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    stop.set()

  previous = {sig: signal.signal(sig, request)
              for sig in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield stop
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)


def compiler_options(ynn_fusions: bool = False) -> dict | None:
  """The XLA options (`jax.jit`'s compiler_options) of cpac_jax's compiled
  train and eval steps, on the CPU: YNNPACK's fusions off unless
  `ynn_fusions` (a run's `config.xla_cpu_ynn_fusions`), and, in a process
  that may run on one core only (as each shard of scripts/bench_sweep.py's
  sharded mode is pinned), Eigen's matmuls on the calling thread instead of
  handed to a thread pool with no other core to run on."""
  if jax.default_backend() != "cpu":
    return None
  options = {}
  if not ynn_fusions:
    options["xla_cpu_experimental_ynn_fusion_type"] = ""  # no fusion types
  if _usable_cores() == 1:
    options["xla_cpu_multi_thread_eigen"] = False
  return options or None


def reuse_host_memory() -> bool:
  """Has glibc's malloc, process-wide, serve blocks from its heaps and keep
  what is freed there (`mallopt`: no mmap, 1 GiB trim threshold), so each
  call of a compiled step reuses the pages of the call before.

  By default glibc maps each block over its mmap threshold (raised as
  blocks are freed, to 32 MiB at most) with mmap and unmaps it on free; a
  step whose temporaries need more, as XLA's CPU runtime allocates them in
  one block a call, then faults every page of them in on every call. See
  experiments/benchmarks/host_memory.md for what it costs and what it
  leaves: blocks that XLA's worker threads allocate from their own arenas
  (at most 64 MiB each, deleted when emptied) still fault; one arena for
  all threads (M_ARENA_MAX=1) stopped those too but slowed small steps by
  5-25% (a probe, not committed). Returns whether it applied: False where
  the C library is not glibc. cpac_jax's training command lines
  (`cpac_jax.main`, `cpac_jax.sweep`) and the benchmark scripts that time
  steps (scripts/bench_peers.py, bench_lowering.py, bench_vgg16.py,
  bench_shootout.py) call
  it first; the process then keeps what it frees for reuse (up to 1 GiB
  above the heap's top) instead of returning it to the system.
  """
  try:
    libc = ctypes.CDLL("libc.so.6")
    return (libc.mallopt(_M_MMAP_MAX, 0) == 1
            and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1)
  except (OSError, AttributeError):  # not glibc
    return False


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's malloc.h


def _usable_cores() -> int:
  """The cores this process may run on (its affinity, where the system
  has one)."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def _make_programs(config, groups, tx, images, labels, batch_sharding,
                   seed_of, tap, unroll, teacher_logits=None):
  """The compiled train chunk and eval pass of `groups`, closed over the
  train data (and, to distil from, the teacher's logits on it); each batch
  is split over the devices of `batch_sharding`.

  train_chunk(states, taps, orders, steps) runs `steps` of every run and
  returns the new states and taps, each run's summed loss and correct
  count, and the first step whose loss wasn't finite (-1 if none).
  """
  batch_size = config.batch_size
  steps, evaluations = [], []
  objective = _loss if teacher_logits is None else distillation_loss(
      setting(config, "distill_weight"),
      setting(config, "distill_temperature"))
  for group in groups:
    step = make_step(group.graphdef, tx, objective)
    evaluation = make_evaluation(config, group.eval_graphdef)
    if group.stacked:
      step = jax.vmap(step, in_axes=(0, 0, 0, None, None))
      evaluation = jax.vmap(evaluation, in_axes=(0, 0, None, None, None))
    steps.append(step)
    evaluations.append(evaluation)

  jit = functools.partial(jax.jit, compiler_options=compiler_options(
      bool(config.get("xla_cpu_ynn_fusions"))))

  @jit
  def train_chunk(states, taps, orders, chunk):

    def train_step(carry, step):
      states, taps = carry
      new, losses, correct = [], [], []
      for group_step, seed, state in zip(steps, seed_of, states):
        index = jax.lax.dynamic_slice_in_dim(orders[seed], step * batch_size,
                                             batch_size)
        x = data.normalize(images[index], config.dataset.mean,
                           config.dataset.std)
        y = labels[index]
        target = y if teacher_logits is None else (y, teacher_logits[index])
        x, target = jax.lax.with_sharding_constraint((x, target),
                                                     batch_sharding)
        params, rest, opt_state, loss, logits, grads = group_step(
            state["params"], state["rest"], state["opt_state"], x, target)
        new.append({"params": params, "rest": rest, "opt_state": opt_state})
        if tap is not None:
          taps = jax.tree.map(jnp.add, taps, tap(grads))
        losses.append(jnp.reshape(loss, (-1,)))
        correct.append(jnp.reshape(
            jnp.sum(jnp.argmax(logits, -1) == y, axis=-1), (-1,)))
      return (new, taps), (jnp.concatenate(losses), jnp.concatenate(correct))

    (states, taps), (losses, correct) = jax.lax.scan(
        train_step, (states, taps), chunk, unroll=unroll)
    finite = jnp.isfinite(losses)
    bad = jnp.where(jnp.all(finite, axis=0), -1,
                    chunk[jnp.argmin(finite, axis=0)])
    return states, taps, losses.sum(0), correct.sum(0), bad

  @jit
  def evaluate(states, x_all, y_all, mask):
    losses, correct = zip(*(
        evaluation(state["params"], state["rest"], x_all, y_all, mask)
        for evaluation, state in zip(evaluations, states)))
    return (jnp.concatenate([jnp.reshape(a, (-1,)) for a in losses]),
            jnp.concatenate([jnp.reshape(a, (-1,)) for a in correct]))

  return train_chunk, evaluate


def train_runs(runs: Sequence[tuple[ml_collections.ConfigDict, str | Path]],
               state_dir: str | Path | None = None, *,
               progress: Callable[[str], None] | None = None,
               tap: Callable[[Any], Any] | None = None,
               dataset: data.InMemory | None = None) -> list[Outcome]:
  """Train `runs`, (config, workdir) pairs, evaluating on the test split
  after every epoch; return each run's `Outcome`, in order.

  One run trains data parallel over every device (each batch split, the
  rest replicated) and checkpoints into `<workdir>/checkpoints`. Several
  train together as one compiled program on one process: their configs
  may differ only in seed, model.rank, model.factorization and name
  (`vectorized.check_together`), the joint state is checkpointed in
  `state_dir`, and each run's final parameters are saved in its workdir's
  `checkpoints/` once all have finished ("train_seconds" is the program's
  time shared equally among them).

  Each workdir gets config.json, metrics.jsonl, TensorBoard events and, if
  the run finished, result.json (`cpac_jax.rundir`). Resumable: the full
  state (parameters, optimizer state, batch-norm statistics, position in
  the epoch, partial sums) is checkpointed after every epoch and on
  SIGTERM; data order and initialisation derive from each config's seed
  and the epoch. A run with a teacher (`config.teacher`: model.init
  "teacher", distillation) trains alone, its teacher a finished run beside
  its workdir. Rerun with the same runs, training resumes from the last
  checkpoint and ends with the same parameters, bit for bit on the CPU, as
  an uninterrupted run. A run whose loss turns non-finite is left out of
  the metrics and results from then on (its Outcome names the step); once
  every run has, training stops.

  Args:
    runs: (config, workdir) pairs.
    state_dir: where several runs keep their joint checkpoints.
    progress: called with each progress line (default: absl logging).
    tap: (grads) -> pytree, summed over every training step into the
      Outcome's `tap` (and checkpointed with the state); one run only.
    dataset: data to use instead of the configs' dataset (uint8 images,
      normalised by `dataset.mean` and `dataset.std`).

  Raises:
    ValueError: a bad config, configs that can't train together, or a
      workdir holding a different config's run; before any compute.
    data.DataNotFoundError: the dataset isn't in the data dir.
    Preempted: SIGTERM or Ctrl-C arrived; a checkpoint was saved first.
  """
  if any(not str(workdir) for _, workdir in runs):
    raise ValueError("an empty workdir was given; name the folder the run "
                     "writes into")
  runs = [(config, Path(workdir)) for config, workdir in runs]
  if not runs:
    return []
  configs = [config for config, _ in runs]
  first = configs[0]
  distributed.initialize(first)
  together = len(runs) > 1
  if together and jax.process_count() > 1:
    raise ValueError(
        "runs trained together use one process; to spread a sweep over "
        f"{jax.process_count()} hosts, give each its --shard=i/n instead")
  if together and (tap is not None or state_dir is None):
    raise ValueError("runs trained together need a state_dir, and take no "
                     "tap")
  info = dataset.info if dataset is not None else None
  for config in configs:
    validate(config, info)
  if together:
    check_together(configs)
  for config, workdir in runs:
    rundir.check_config(workdir, config)
  teacher = teacher_run = None
  if any(has_teacher(config) for config in configs):
    if together:
      raise ValueError(
          "runs with a teacher (model.init 'teacher' or distill_weight > 0) "
          "train one at a time: run their sweep without --vectorize")
    teacher, teacher_run = restore(_teacher_workdir(*runs[0]))
  log = progress or logging.info
  if dataset is None:
    info = data.INFO[first.dataset.name]
    if info.seeded_split and len({c.seed for c in configs}) > 1:
      raise ValueError(
          f"{first.dataset.name} draws each seed's own train/test split, so "
          "runs of different seeds can't share batches; train them a seed "
          "at a time (as sweep --vectorize does)")
    dataset = data.InMemory(*data.load_splits(
        first.dataset, first.get("num_train_examples") or 0,
        first.get("num_test_examples") or 0, first.seed), info)
  with contextlib.ExitStack() as locks:
    for _, workdir in runs:  # one process at a time in each run's workdir
      locks.enter_context(rundir.lock(workdir))
    return _train(runs, dataset, state_dir, tap, log, teacher, teacher_run,
                  locks)


def _train(runs, dataset: data.InMemory, state_dir, tap, log, teacher,
           teacher_run, cleanup: contextlib.ExitStack) -> list[Outcome]:
  """`train_runs` once its checks have passed and its workdirs are locked;
  `cleanup` closes what it opens if training stops on an error."""
  configs = [config for config, _ in runs]
  first = configs[0]
  together = len(runs) > 1
  train_split, test_split, info = dataset
  num_train, num_test = len(train_split.labels), len(test_split.labels)
  batch_size = first.batch_size
  steps_per_epoch = num_train // batch_size
  if steps_per_epoch < 1:
    raise ValueError(f"batch_size {batch_size} exceeds the {num_train} "
                     "training examples")
  for config, workdir in runs:
    workdir.mkdir(parents=True, exist_ok=True)
    rundir.write_config(workdir, config)

  seeds = sorted({config.seed for config in configs})
  keys = {seed: jax.random.split(jax.random.key(seed)) for seed in seeds}
  if compressing(first):
    groups = [_compressed_group(first, runs[0][1], teacher, info,
                                keys[first.seed][0])]
  else:
    groups = make_groups(configs, info, {s: k[0] for s, k in keys.items()},
                         stacked=together)
    if setting(first, "model.init") == "teacher":
      group, = groups
      student = models.from_teacher(
          nnx.merge(group.graphdef, group.params, group.rest), teacher)
      _, _, (group.params, group.rest) = split_modes(student)
  teacher_logits = None
  if setting(first, "distill_weight") > 0:
    teacher_logits = _logits(teacher, train_split.images,
                             teacher_run.dataset)
  seed_of = [seeds.index(configs[g.indices[0]].seed) for g in groups]
  # Position of each run in the concatenated per-run outputs.
  column = np.argsort(np.concatenate([g.indices for g in groups]))

  tx = optimizers.make_optimizer(first.optimizer,
                                 first.num_epochs * steps_per_epoch)
  # A run alone: data parallel over every device. Runs together: one
  # device, as many tiny models gain nothing from splitting a batch.
  devices = jax.devices()[:1] if together else jax.devices()
  mesh = jax.sharding.Mesh(np.asarray(devices), ("data",),
                           axis_types=(jax.sharding.AxisType.Auto,))
  replicated = NamedSharding(mesh, PartitionSpec())
  train_chunk, evaluate = _make_programs(
      first, groups, tx, jax.device_put(train_split.images, replicated),
      jax.device_put(train_split.labels, replicated),
      NamedSharding(mesh, PartitionSpec("data")), seed_of, tap,
      # unrolled, many small models run faster
      unroll=True if first.get("unroll") else 2 if together else 1,
      teacher_logits=None if teacher_logits is None else jax.device_put(
          teacher_logits, replicated))
  test_batches = jax.device_put(eval_batches(test_split,
                                             first.eval_batch_size),
                                replicated)
  num_runs = len(runs)
  state = {"groups": [{"params": g.params, "rest": g.rest,
                       "opt_state": (jax.vmap(tx.init) if g.stacked
                                     else tx.init)(g.params)}
                      for g in groups],
           "taps": () if tap is None else jax.tree.map(
               jnp.zeros_like, tap(groups[0].params)),
           "position": np.zeros(2, np.int64),
           "sums": _zero_sums(num_runs),
           "diverged": np.full(num_runs, -1, np.int64)}
  if together:
    name = hashlib.sha256(" ".join(run_key(c) for c in configs).encode())
    directory = Path(state_dir) / name.hexdigest()[:12]
  else:
    directory = runs[0][1] / "checkpoints"
  checkpoints = checkpoint.manager(directory)
  # On an error (a full disk, say), let orbax's threads end before the
  # error is reported; its own error then is the one that counts.
  cleanup.callback(_close_quietly, checkpoints)
  state, epoch, step = checkpoint.resume(
      checkpoints, state, steps_per_epoch, log,
      " ".join(run_key(c) for c in configs))
  for name in ("groups", "taps"):
    state[name] = jax.device_put(state[name], replicated)
  histories = [rundir.history(workdir, epoch - 1, complete=diverged < 0)
               for (_, workdir), diverged in zip(runs, state["diverged"])]
  writers = ([rundir.MetricWriter(workdir) for _, workdir in runs]
             if distributed.writes_files() else [])
  steps_per_call = min(first.steps_per_call, steps_per_epoch)

  def save(epoch, step):
    checkpoint.save(checkpoints, state, epoch, step, steps_per_epoch)

  def stop_preempted(where):
    checkpoints.wait_until_finished()
    what = f"{num_runs} runs trained together" if together else runs[0][1]
    raise Preempted(f"{stop.name}: saved {where} of {what}; rerun the "
                    "same command to resume")

  if together:
    log(f"training {num_runs} runs together in {len(groups)} groups")
  with _signals_request_stop() as stop:
    while epoch <= first.num_epochs and np.any(state["diverged"] < 0):
      orders = jax.device_put(np.stack([
          np.asarray(epoch_order(keys[seed][1], epoch, num_train))
          for seed in seeds]), replicated)
      if step == 0:
        state["sums"] = _zero_sums(num_runs)
      start = last_log = time.perf_counter()
      seconds = float(state["sums"]["seconds"])
      while step < steps_per_epoch:
        # Chunks stay on a fixed grid of the epoch, so a resumed run
        # compiles and runs exactly the chunks an uninterrupted one does.
        end = min((step // steps_per_call + 1) * steps_per_call,
                  steps_per_epoch)
        groups_state, taps, loss, correct, bad = train_chunk(
            state["groups"], state["taps"], orders,
            jax.device_put(np.arange(step, end), replicated))
        bad = np.asarray(bad)[column]
        newly = (bad >= 0) & (state["diverged"] < 0)
        state["diverged"] = np.where(
            newly, (epoch - 1) * steps_per_epoch + bad, state["diverged"])
        for i in np.flatnonzero(newly):
          log(f"run {runs[i][1]} diverged: "
              f"{_divergence(state['diverged'][i], steps_per_epoch)}")
        if not np.any(state["diverged"] < 0):
          break  # nothing left to train; the last good checkpoint stays
        state["groups"], state["taps"] = groups_state, taps
        sums = state["sums"]
        sums["loss"] = sums["loss"] + np.asarray(loss)[column]
        sums["correct"] = sums["correct"] + np.asarray(correct)[column]
        step = end
        now = time.perf_counter()
        sums["seconds"] = np.asarray(seconds + now - start)
        if stop.is_set() and step < steps_per_epoch:
          save(epoch, step)
          stop_preempted(f"epoch {epoch}, step {step}")
        if now - last_log > 30:
          log(f"epoch {epoch} step {step}/{steps_per_epoch}: train loss "
              f"{float(np.mean(sums['loss'])) / step:.4f} (mean of runs), "
              f"{step * batch_size * num_runs / float(sums['seconds']):.0f} "
              "examples/s (this epoch, all runs)")
          last_log = now
      if not np.any(state["diverged"] < 0):
        break
      test_loss, test_correct = (np.asarray(a)[column] for a in evaluate(
          state["groups"], *test_batches))
      sums = state["sums"]
      for i in np.flatnonzero(state["diverged"] < 0):
        metrics = epoch_metrics(
            epoch, float(sums["loss"][i]), int(sums["correct"][i]),
            float(test_loss[i]), float(test_correct[i]),
            float(sums["seconds"]) / num_runs, steps_per_epoch, batch_size,
            num_test)
        histories[i].append(metrics)
        if writers:
          writers[i].write(epoch * steps_per_epoch, metrics)
      log(_epoch_line(epoch, first.num_epochs, histories,
                      float(sums["seconds"])))
      save(epoch, steps_per_epoch)
      if stop.is_set() and epoch < first.num_epochs:
        stop_preempted(f"epoch {epoch}")
      epoch, step = epoch + 1, 0
  checkpoints.wait_until_finished()
  last_good = checkpoints.latest_step()
  checkpoints.close()
  for writer in writers:
    writer.close()

  outcomes = [None] * num_runs
  total_steps = first.num_epochs * steps_per_epoch
  trained = {"trained": f"vectorized ({num_runs} runs)" if together
             else "alone"}
  for group, group_state in zip(groups, state["groups"]):
    for member, (i, counts) in enumerate(zip(group.indices, group.counts)):
      config, workdir = runs[i]
      if state["diverged"][i] >= 0:
        error = _divergence(state["diverged"][i], steps_per_epoch)
        if not together:
          error += (f"; the last good checkpoint, at global step "
                    f"{last_good}, is kept in {workdir}" if last_good
                    is not None else "; no checkpoint was saved before")
        outcomes[i] = Outcome({**rundir.failed_row(config), **trained},
                              error, None)
        continue
      if together and distributed.writes_files():
        params, rest = group.unpadded(member, group_state["params"],
                                      group_state["rest"])
        checkpoint.save_final(workdir / "checkpoints", total_steps,
                              {"groups": [{"params": params, "rest": rest}]})
      row = {**rundir.result_row(config, counts, histories[i]), **trained}
      rundir.write_result(workdir, row)
      outcomes[i] = Outcome(row, None, None if tap is None else jax.tree.map(
          np.asarray, state["taps"]))
  return outcomes


def _compressed_group(config: ml_collections.ConfigDict, workdir: Path,
                      teacher: nnx.Module, info: data.DatasetInfo,
                      init_key: jax.Array) -> Group:
  """The one group of a run that compresses its teacher (`config.compress`):
  the teacher's layers decomposed, or (init "random") the same architecture
  drawn afresh from `init_key`; the report written to the workdir
  (compression.json, which `restore` rebuilds the architecture from, and
  compression.md)."""
  block = config.compress
  ranks = compression.allocate(teacher, block.budget, block.factorization,
                               exclude=tuple(block.exclude),
                               allocation=block.allocation)
  if block.init == "random":
    model, report = compression.compress(
        build_model(config, info, init_key), init="random",
        rngs=nnx.Rngs(params=init_key), **_compress_kwargs(config, ranks))
  else:
    model, report = compression.compress(teacher, key=init_key,
                                         **_compress_kwargs(config, ranks))
  if distributed.writes_files():
    (workdir / "compression.json").write_text(
        json.dumps(report.to_dict(), indent=2))
    (workdir / "compression.md").write_text(report.table() + "\n")
  return Group.of_model(model, 0, dense_twin=teacher)


def _compress_kwargs(config: ml_collections.ConfigDict, ranks: dict) -> dict:
  """`compression.compress`'s arguments for `config.compress` at `ranks`."""
  block = config.compress
  return dict(budget=block.budget, factorization=block.factorization,
              exclude=tuple(block.exclude), allocation=block.allocation,
              ranks=ranks,
              implementation=config.model.get("implementation", "auto"))


def _close_quietly(checkpoints) -> None:
  """Close `checkpoints` after training failed (its own errors dropped:
  the caller reports the one that stopped training)."""
  with contextlib.suppress(Exception):
    checkpoints.close()


def _teacher_workdir(config: ml_collections.ConfigDict, workdir: Path
                     ) -> Path:
  """The workdir of `config`'s teacher: the finished run beside `workdir`
  (a run of the same sweep) whose key is that of `teacher_config`."""
  key = run_key(teacher_config(config))
  found = sorted(p for p in workdir.parent.glob(f"*-{key}")
                 if (p / "result.json").exists())
  if not found:
    raise ValueError(
        f"{workdir.name}: its teacher ({config.teacher!r}, run key {key}) "
        f"has no finished run in {workdir.parent}; put the teacher's run "
        "earlier in the same sweep")
  return found[0]


def _logits(model: nnx.Module, images: np.ndarray, dataset,
            batch_size: int = 1000) -> np.ndarray:
  """`model`'s logits on uint8 `images`, normalised as `dataset` says."""
  graphdef, state = nnx.split(model)
  apply = jax.jit(lambda state, x: nnx.merge(graphdef, state)(
      data.normalize(x, dataset.mean, dataset.std)))
  return np.concatenate([np.asarray(apply(state, images[i:i + batch_size]))
                         for i in range(0, len(images), batch_size)])


def _divergence(global_step: int, steps_per_epoch: int) -> str:
  epoch, step = divmod(int(global_step), steps_per_epoch)
  return (f"loss became non-finite at epoch {epoch + 1}, step {step} "
          f"(global step {global_step})")


def _epoch_line(epoch: int, num_epochs: int, histories: list[list[dict]],
                seconds: float) -> str:
  if len(histories) == 1:
    m = histories[0][-1]
    return (f"epoch {epoch}/{num_epochs}: train loss {m['train_loss']:.4f} "
            f"acc {m['train_accuracy']:.4f}, test loss {m['test_loss']:.4f} "
            f"acc {m['test_accuracy']:.4f}, "
            f"{m['examples_per_second']:.0f} examples/s")
  accuracies = [h[-1]["test_accuracy"] for h in histories
                if h and h[-1]["epoch"] == epoch]
  return (f"epoch {epoch}/{num_epochs} of {len(histories)} runs in "
          f"{seconds:.0f} s: test accuracy "
          f"{min(accuracies, default=math.nan):.4f}-"
          f"{max(accuracies, default=math.nan):.4f}")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path,
                       progress: Callable[[str], None] | None = None) -> dict:
  """Train the one run `config` describes in `workdir` (`train_runs`);
  return its results row (`cpac_jax.rundir.COLUMNS`).

  Raises:
    As `train_runs`, and Diverged: the loss became non-finite; names the
    step, keeps the last good checkpoint.
  """
  outcome, = train_runs([(config, workdir)], progress=progress)
  if outcome.error is not None:
    raise Diverged(outcome.error)
  return outcome.row


def restore(workdir: str | Path, info: data.DatasetInfo | None = None
            ) -> tuple[nnx.Module, ml_collections.ConfigDict]:
  """The model of a run's workdir, with its last checkpoint's parameters and
  statistics, in eval mode; and the run's config. `info`: the facts of the
  data a caller brought (`data.InMemory`), for a run trained on it."""
  config = rundir.read_config(workdir)
  model = build_model(config, info)
  if compressing(config):
    report = json.loads((Path(workdir) / "compression.json").read_text())
    ranks = {layer["path"]: layer["rank"] for layer in report["layers"]}
    model = nnx.eval_shape(lambda: compression.compress(
        model, init="random", **_compress_kwargs(config, ranks))[0])
  _, eval_graphdef, (params, rest) = split_modes(model)
  target = {"groups": [{"params": params, "rest": rest}]}
  state, = checkpoint.restore(Path(workdir) / "checkpoints",
                              target)["groups"]
  return nnx.merge(eval_graphdef, state["params"], state["rest"]), config
