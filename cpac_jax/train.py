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
import functools
import hashlib
import json
import math
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

from cpac_jax import (
  checkpoint,
  compression,
  data,
  distributed,
  extensions,
  optimizers,
  rundir,
)
from cpac_jax.config import (
  build_model,
  compressing,
  has_teacher,
  run_key,
  teacher_config,
  validate,
)
from cpac_jax.extensions import distillation_loss
from cpac_jax.process import compiler_options, reuse_host_memory
from cpac_jax.vectorized import Group, check_together, make_groups, split_modes

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


def make_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
              objective: Callable[[jax.Array, Any], jax.Array] = (
                  extensions.cross_entropy)):
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
      loss = jnp.sum(extensions.cross_entropy(logits, y) * m)
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


def _make_programs(config, groups, tx, images, labels, arrays, batch_sharding,
                   seed_of, chain, carrier, unroll):
  """The compiled train chunk and eval pass of `groups`, trained on the
  objective the extensions in `chain` make, closed over the train data and
  `arrays`, the per-example arrays they add (already on the devices); each
  batch is split over the devices of `batch_sharding`; `carrier` (the
  chain's `_carrier`) sums what it carries through the steps.

  train_chunk(states, carry, orders, steps) runs `steps` of every run and
  returns the new states and carry, each run's summed loss and correct
  count, and the first step whose loss wasn't finite (-1 if none).
  """
  batch_size = config.batch_size
  objective = extensions.cross_entropy
  for extension in chain:
    objective = extension.objective(objective)
  steps, evaluations = [], []
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
  def train_chunk(states, carry, orders, chunk):

    def train_step(inputs, step):
      states, carry = inputs
      new, losses, correct = [], [], []
      for group_step, seed, state in zip(steps, seed_of, states):
        index = jax.lax.dynamic_slice_in_dim(orders[seed], step * batch_size,
                                             batch_size)
        x = data.normalize(images[index], config.dataset.mean,
                           config.dataset.std)
        y = labels[index]
        target = (y, *(a[index] for a in arrays)) if arrays else y
        x, target = jax.lax.with_sharding_constraint((x, target),
                                                     batch_sharding)
        params, rest, opt_state, loss, logits, grads = group_step(
            state["params"], state["rest"], state["opt_state"], x, target)
        new.append({"params": params, "rest": rest, "opt_state": opt_state})
        carry = carrier.carry_update(carry, grads)
        losses.append(jnp.reshape(loss, (-1,)))
        correct.append(jnp.reshape(
            jnp.sum(jnp.argmax(logits, -1) == y, axis=-1), (-1,)))
      return (new, carry), (jnp.concatenate(losses),
                            jnp.concatenate(correct))

    (states, carry), (losses, correct) = jax.lax.scan(
        train_step, (states, carry), chunk, unroll=unroll)
    finite = jnp.isfinite(losses)
    bad = jnp.where(jnp.all(finite, axis=0), -1,
                    chunk[jnp.argmin(finite, axis=0)])
    return states, carry, losses.sum(0), correct.sum(0), bad

  @jit
  def evaluate(states, x_all, y_all, mask):
    losses, correct = zip(*(
        evaluation(state["params"], state["rest"], x_all, y_all, mask)
        for evaluation, state in zip(evaluations, states)))
    return (jnp.concatenate([jnp.reshape(a, (-1,)) for a in losses]),
            jnp.concatenate([jnp.reshape(a, (-1,)) for a in correct]))

  return train_chunk, evaluate


def _carrier(chain: list[extensions.Extension]) -> extensions.Extension:
  """The one extension of `chain` that carries a sum through the scan (and
  the checkpoint's "taps"), or one that carries nothing."""
  carrying = [e for e in chain if e.carries]
  if len(carrying) > 1:
    raise ValueError(f"at most one extension may carry a sum, not "
                     f"{[type(e).__name__ for e in carrying]}")
  return carrying[0] if carrying else extensions.Extension()


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
  "teacher", distillation, compress) trains alone, its teacher a finished
  run beside its workdir; what a config adds to training is a chain of
  `cpac_jax.extensions`. Rerun with the same runs, training resumes from
  the last checkpoint and ends with the same parameters, bit for bit on the
  CPU, as an uninterrupted run. A run whose loss turns non-finite is left
  out of the metrics and results from then on (its Outcome names the
  step); once every run has, training stops.

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
  info = dataset.info if dataset is not None else None
  for config in configs:
    validate(config, info)
  extensions.check(configs, together=together, tap=tap is not None,
                   state_dir=state_dir is not None,
                   own_data=dataset is None)
  if together:
    check_together(configs)
  for config, workdir in runs:
    rundir.check_config(workdir, config)
  teacher = (restore(_teacher_workdir(*runs[0])) if has_teacher(first)
             else (None, None))
  if dataset is None:
    dataset = data.InMemory(*data.load_splits(
        first.dataset, first.get("num_train_examples") or 0,
        first.get("num_test_examples") or 0, first.seed),
        data.INFO[first.dataset.name])
  layout = _Together(runs, state_dir) if together else _Alone(runs)
  with contextlib.ExitStack() as cleanup:
    for _, workdir in runs:  # one process at a time in each run's workdir
      cleanup.enter_context(rundir.lock(workdir))
    training = _Training(runs, dataset, layout, teacher, tap,
                         progress or logging.info, cleanup)
    return training.run()


class _Alone:
  """A run trained alone: data parallel over every device, checkpointed in
  its workdir's checkpoints/ (its last checkpoint is its final state)."""

  trained, unroll, stacked = "alone", 1, False

  def __init__(self, runs):
    self.workdir = runs[0][1]
    self.devices = jax.devices()
    self.directory = self.workdir / "checkpoints"

  def __str__(self):
    return str(self.workdir)

  def announce(self, log, groups):
    del log, groups  # the run's own lines say it all

  def failed(self, error: str, last_good: int | None) -> str:
    return error + (f"; the last good checkpoint, at global step "
                    f"{last_good}, is kept in {self.workdir}"
                    if last_good is not None
                    else "; no checkpoint was saved before")

  def save_final(self, group, member, group_state, workdir, total_steps):
    del group, member, group_state, workdir, total_steps  # checkpointed


class _Together:
  """Runs trained together: stacked on one device (many tiny models gain
  nothing from splitting a batch), checkpointed jointly in `state_dir`
  under a name their run keys give, each run's final parameters saved in
  its workdir once all have finished."""

  unroll, stacked = 2, True  # unrolled, many small models run faster

  def __init__(self, runs, state_dir):
    self.num_runs = len(runs)
    self.trained = f"vectorized ({self.num_runs} runs)"
    self.devices = jax.devices()[:1]
    name = hashlib.sha256(" ".join(run_key(c) for c, _ in runs).encode())
    self.directory = Path(state_dir) / name.hexdigest()[:12]

  def __str__(self):
    return f"{self.num_runs} runs trained together"

  def announce(self, log, groups):
    log(f"training {self.num_runs} runs together in {len(groups)} groups")

  def failed(self, error: str, last_good: int | None) -> str:
    del last_good  # the joint checkpoint is no one run's
    return error

  def save_final(self, group, member, group_state, workdir, total_steps):
    if distributed.writes_files():
      params, rest = group.unpadded(member, group_state["params"],
                                    group_state["rest"])
      checkpoint.save_final(workdir / "checkpoints", total_steps,
                            {"groups": [{"params": params, "rest": rest}]})


class _Training:
  """One `train_runs` call once its checks have passed and its workdirs are
  locked: the groups, compiled programs and state set up, then `run`.
  `cleanup` closes what it opens if training stops on an error."""

  def __init__(self, runs, dataset: data.InMemory, layout, teacher, tap,
               log, cleanup: contextlib.ExitStack):
    self.runs, self.layout, self.log = runs, layout, log
    self.configs = [config for config, _ in runs]
    self.first = first = self.configs[0]
    train_split, test_split, info = dataset
    self.num_train, self.num_test = (len(train_split.labels),
                                     len(test_split.labels))
    self.steps_per_epoch = self.num_train // first.batch_size
    if self.steps_per_epoch < 1:
      raise ValueError(f"batch_size {first.batch_size} exceeds the "
                       f"{self.num_train} training examples")
    for config, workdir in runs:
      workdir.mkdir(parents=True, exist_ok=True)
      rundir.write_config(workdir, config)
    self.seeds = sorted({config.seed for config in self.configs})
    self.keys = {seed: jax.random.split(jax.random.key(seed))
                 for seed in self.seeds}
    self.chain = extensions.for_run(first, *teacher, train_split.images,
                                    self.keys[first.seed][0], tap,
                                    evaluation=test_split)
    self.carrier = _carrier(self.chain)
    self.groups = self._initial_groups(info)
    self.column = np.argsort(np.concatenate([g.indices
                                             for g in self.groups]))
    self.tx = optimizers.make_optimizer(
        first.optimizer, first.num_epochs * self.steps_per_epoch)
    mesh = jax.sharding.Mesh(np.asarray(layout.devices), ("data",),
                             axis_types=(jax.sharding.AxisType.Auto,))
    self.replicated = NamedSharding(mesh, PartitionSpec())
    put = functools.partial(jax.device_put, device=self.replicated)
    self.train_chunk, self.evaluate = _make_programs(
        first, self.groups, self.tx, put(train_split.images),
        put(train_split.labels),
        [put(a) for e in self.chain for a in e.example_arrays()],
        NamedSharding(mesh, PartitionSpec("data")),
        [self.seeds.index(self.configs[g.indices[0]].seed)
         for g in self.groups], self.chain, self.carrier,
        unroll=True if first.get("unroll") else layout.unroll)
    self.test_batches = put(eval_batches(test_split,
                                         first.eval_batch_size))
    self.checkpoints = checkpoint.manager(layout.directory)
    # On an error (a full disk, say), let orbax's threads end before the
    # error is reported; its own error then is the one that counts.
    cleanup.callback(_close_quietly, self.checkpoints)

  def _initial_groups(self, info) -> list[Group]:
    """The runs' groups (`make_groups`), each model as the chain leaves it
    (a chain belongs to a run alone, whose group holds one model)."""
    groups = make_groups(self.configs, info,
                         {s: k[0] for s, k in self.keys.items()},
                         stacked=self.layout.stacked)
    if self.chain:  # then one run, alone: one unstacked group
      group, = groups
      model = nnx.merge(group.graphdef, group.params, group.rest)
      for extension in self.chain:
        model = extension.init_model(model, self.runs[0])
      group.with_model(model)
    return groups

  def _initial_state(self) -> dict:
    num_runs = len(self.runs)
    return {"groups": [{"params": g.params, "rest": g.rest,
                        "opt_state": (jax.vmap(self.tx.init) if g.stacked
                                      else self.tx.init)(g.params)}
                       for g in self.groups],
            "taps": self.carrier.carry_init(self.groups[0].params),
            "position": np.zeros(2, np.int64),
            "sums": _zero_sums(num_runs),
            "diverged": np.full(num_runs, -1, np.int64)}

  def run(self) -> list[Outcome]:
    keys = " ".join(run_key(c) for c in self.configs)
    state, epoch, step = checkpoint.resume(
        self.checkpoints, self._initial_state(), self.steps_per_epoch,
        self.log, keys)
    for name in ("groups", "taps"):
      state[name] = jax.device_put(state[name], self.replicated)
    self.state = state
    self.histories = [
        rundir.history(workdir, epoch - 1, complete=diverged < 0)
        for (_, workdir), diverged in zip(self.runs, state["diverged"])]
    self.writers = ([rundir.MetricWriter(w) for _, w in self.runs]
                    if distributed.writes_files() else [])
    self.layout.announce(self.log, self.groups)
    with _signals_request_stop() as stop:
      while epoch <= self.first.num_epochs and self._training():
        self._train_epoch(epoch, step, stop)
        if not self._training():
          break
        self._end_epoch(epoch)
        if stop.is_set() and epoch < self.first.num_epochs:
          self._preempted(stop, f"epoch {epoch}")
        epoch, step = epoch + 1, 0
    self.checkpoints.wait_until_finished()
    last_good = self.checkpoints.latest_step()
    self.checkpoints.close()
    for writer in self.writers:
      writer.close()
    return self._outcomes(last_good)

  def _training(self) -> bool:
    """Whether any run is still training (has not diverged)."""
    return bool(np.any(self.state["diverged"] < 0))

  def _save(self, epoch: int, step: int) -> None:
    checkpoint.save(self.checkpoints, self.state, epoch, step,
                    self.steps_per_epoch)

  def _preempted(self, stop, where: str):
    self.checkpoints.wait_until_finished()
    raise Preempted(f"{stop.name}: saved {where} of {self.layout}; rerun "
                    "the same command to resume")

  def _train_epoch(self, epoch: int, step: int, stop) -> None:
    """The steps of `epoch` from `step` on, in compiled chunks; a stop
    request saves a checkpoint mid-epoch and raises Preempted."""
    state, steps_per_epoch = self.state, self.steps_per_epoch
    orders = jax.device_put(np.stack([
        np.asarray(epoch_order(self.keys[seed][1], epoch, self.num_train))
        for seed in self.seeds]), self.replicated)
    if step == 0:
      state["sums"] = _zero_sums(len(self.runs))
    start = last_log = time.perf_counter()
    seconds = float(state["sums"]["seconds"])
    steps_per_call = min(self.first.steps_per_call, steps_per_epoch)
    while step < steps_per_epoch:
      # Chunks stay on a fixed grid of the epoch, so a resumed run
      # compiles and runs exactly the chunks an uninterrupted one does.
      end = min((step // steps_per_call + 1) * steps_per_call,
                steps_per_epoch)
      groups_state, carry, loss, correct, bad = self.train_chunk(
          state["groups"], state["taps"], orders,
          jax.device_put(np.arange(step, end), self.replicated))
      self._note_divergence(epoch, np.asarray(bad)[self.column])
      if not self._training():
        return  # nothing left to train; the last good checkpoint stays
      state["groups"], state["taps"] = groups_state, carry
      sums = state["sums"]
      sums["loss"] = sums["loss"] + np.asarray(loss)[self.column]
      sums["correct"] = sums["correct"] + np.asarray(correct)[self.column]
      step = end
      now = time.perf_counter()
      sums["seconds"] = np.asarray(seconds + now - start)
      if stop.is_set() and step < steps_per_epoch:
        self._save(epoch, step)
        self._preempted(stop, f"epoch {epoch}, step {step}")
      if now - last_log > 30:
        seen = step * self.first.batch_size * len(self.runs)
        self.log(
            f"epoch {epoch} step {step}/{steps_per_epoch}: train loss "
            f"{float(np.mean(sums['loss'])) / step:.4f} (mean of runs), "
            f"{seen / float(sums['seconds']):.0f} examples/s (this epoch, "
            "all runs)")
        last_log = now

  def _note_divergence(self, epoch: int, bad: np.ndarray) -> None:
    """Marks the runs whose loss first turned non-finite at step `bad` of
    `epoch` (-1: none) as diverged, and logs each."""
    state = self.state
    newly = (bad >= 0) & (state["diverged"] < 0)
    state["diverged"] = np.where(
        newly, (epoch - 1) * self.steps_per_epoch + bad, state["diverged"])
    for i in np.flatnonzero(newly):
      self.log(f"run {self.runs[i][1]} diverged: "
               f"{_divergence(state['diverged'][i], self.steps_per_epoch)}")

  def _end_epoch(self, epoch: int) -> None:
    """Evaluates every run still training, writes its metrics, logs the
    epoch and checkpoints."""
    state = self.state
    test_loss, test_correct = (np.asarray(a)[self.column] for a in
                               self.evaluate(state["groups"],
                                             *self.test_batches))
    sums = state["sums"]
    for i in np.flatnonzero(state["diverged"] < 0):
      metrics = epoch_metrics(
          epoch, float(sums["loss"][i]), int(sums["correct"][i]),
          float(test_loss[i]), float(test_correct[i]),
          float(sums["seconds"]) / len(self.runs), self.steps_per_epoch,
          self.first.batch_size, self.num_test)
      self.histories[i].append(metrics)
      if self.writers:
        self.writers[i].write(epoch * self.steps_per_epoch, metrics)
    self.log(_epoch_line(epoch, self.first.num_epochs, self.histories,
                         float(sums["seconds"])))
    self._save(epoch, self.steps_per_epoch)

  def _outcomes(self, last_good: int | None) -> list[Outcome]:
    """Each run's Outcome; a finished run's result.json written (and, for
    runs trained together, its final parameters saved)."""
    outcomes = [None] * len(self.runs)
    total_steps = self.first.num_epochs * self.steps_per_epoch
    trained = {"trained": self.layout.trained}
    tap = self.carrier.result(self.state["taps"])
    for group, group_state in zip(self.groups, self.state["groups"]):
      for member, (i, counts) in enumerate(zip(group.indices,
                                               group.counts)):
        config, workdir = self.runs[i]
        if self.state["diverged"][i] >= 0:
          error = _divergence(self.state["diverged"][i],
                              self.steps_per_epoch)
          outcomes[i] = Outcome({**rundir.failed_row(config), **trained},
                                self.layout.failed(error, last_good), None)
          continue
        self.layout.save_final(group, member, group_state, workdir,
                               total_steps)
        row = {**rundir.result_row(config, counts, self.histories[i]),
               **trained}
        rundir.write_result(workdir, row)
        outcomes[i] = Outcome(row, None, tap)
    return outcomes


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
        model, init="random", **extensions.compress_kwargs(config, ranks))[0])
  _, eval_graphdef, (params, rest) = split_modes(model)
  target = {"groups": [{"params": params, "rest": rest}]}
  state, = checkpoint.restore(Path(workdir) / "checkpoints",
                              target)["groups"]
  return nnx.merge(eval_graphdef, state["params"], state["rest"]), config
