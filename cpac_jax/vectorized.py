"""Many runs of a sweep trained together, as one compiled program.

A rank sweep at batch size 1 is many tiny models, each too small to keep a
CPU (let alone an accelerator) busy. `train_vectorized` trains runs that
differ only in seed, rank and factorization side by side: every compiled
step updates all of them.

- Runs of one seed see the same examples in the same order, so each
  (factorization, seed) group is one `jax.vmap` over its members with the
  batch shared; the groups of the other seeds and factorizations are further
  branches of the same step.
- Members of a group differ in rank, so their parameters differ in shape:
  each is initialised exactly as its own run would be, then zero-padded to
  the group's widest member (the largest rank) and stacked. A zero CP
  component (a zero column in every factor) or a zero Tucker core slice
  with zero factor columns adds nothing to the layer and gets a zero
  gradient (each factor's gradient is a product of the other factors' or
  the core's zeros), so Adam, SGD and weight decay leave it at zero: every
  member computes what its separate run computes, up to the order of
  floating-point sums (tests/test_train.py checks this against separate
  runs).

Each run gets the workdir a separate run gets: config.json, metrics.jsonl,
TensorBoard events, result.json, and a checkpoint of its final (unpadded)
parameters that `cpac_jax.train.restore` reads. "train_seconds" is the
program's time shared equally among its runs. The joint state is
checkpointed after every epoch and on SIGTERM in `state_dir`; rerun with the
same runs, it resumes there.
"""

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from cpac_jax import train
from cpac_jax.config import computed_fields, run_key, validate

__all__ = ["train_vectorized"]

# Fields in which runs trained together may differ.
_MAY_DIFFER = ("seed", "model.rank", "model.factorization", "name")


def _check_together(configs: Sequence[ml_collections.ConfigDict]) -> None:
  first = computed_fields(configs[0], ignore=_MAY_DIFFER)
  for config in configs[1:]:
    other = computed_fields(config, ignore=_MAY_DIFFER)
    if other != first:
      differ = sorted(train._differences(first, other))
      raise ValueError(
          f"runs trained together may differ only in {', '.join(_MAY_DIFFER)}"
          f"; these differ in {', '.join(differ)}: run them in separate "
          "sweeps, or without --vectorize")


class _Group:
  """The runs of one factorization and seed, stacked along a leading axis."""

  def __init__(self, configs, indices, input_shape, init_key):
    self.indices = indices
    build = lambda i: train.build_model(configs[i], input_shape, init_key)
    models = [nnx.eval_shape(lambda i=i: build(i)) for i in indices]
    self.counts = [train._counts(configs[i], model, input_shape)
                   for i, model in zip(indices, models)]
    widest = max(range(len(models)), key=lambda m: self.counts[m]["params"])
    models[widest].train()
    self.graphdef, *target_state = nnx.split(models[widest], nnx.Param, ...)
    target_state = tuple(target_state)
    models[widest].eval()
    self.eval_graphdef = nnx.split(models[widest], nnx.Param, ...)[0]
    target = jax.tree.leaves(target_state)
    self.shapes = []
    for i, model in zip(indices, models):
      leaves = jax.tree.leaves(nnx.split(model, nnx.Param, ...)[1:])
      if len(leaves) != len(target) or not all(
          a.ndim == t.ndim and all(n <= m for n, m in zip(a.shape, t.shape))
          for a, t in zip(leaves, target)):
        raise ValueError(
            f"run {i} ({configs[i].model.factorization}, rank "
            f"{configs[i].model.rank}) has parameters that don't fit inside "
            f"the widest run's (rank {configs[indices[widest]].model.rank}) "
            "when zero-padded; train it without --vectorize")
      self.shapes.append([a.shape for a in leaves])

    @jax.jit
    def init():
      padded = []
      for i in indices:
        state = tuple(nnx.split(build(i), nnx.Param, ...)[1:])
        padded.append(jax.tree.map(
            lambda a, t: jnp.pad(a, [(0, m - n) for n, m in zip(a.shape,
                                                                t.shape)]),
            state, target_state))
      return jax.tree.map(lambda *a: jnp.stack(a), *padded)

    # One compilation for all members (run op by op, each rank's shapes
    # would compile every op anew), unoptimised: optimising a dozen models'
    # random initialisers takes XLA seconds and saves nothing.
    self.params, self.rest = init.lower().compile(
        {"xla_backend_optimization_level": 0})()

  def unpadded(self, member: int, params, rest):
    """Member `member`'s (params, rest), cut back to its own shapes."""
    leaves, treedef = jax.tree.flatten((params, rest))
    return treedef.unflatten([
        a[member][tuple(slice(0, n) for n in shape)]
        for a, shape in zip(leaves, self.shapes[member], strict=True)])


def train_vectorized(runs: Sequence[tuple[ml_collections.ConfigDict, Path]],
                     state_dir: str | Path,
                     progress: Callable[[str], None] | None = None
                     ) -> list[dict]:
  """Train `runs`, (config, workdir) pairs, together; return their results
  rows in order, a diverged run's with status "diverged".

  The configs may differ only in seed, model.rank, model.factorization and
  name (ValueError otherwise, before any compute); runs of one model and
  factorization must nest when padded to the largest rank, as CP and
  Tucker ranks do.
  """
  configs = [config for config, _ in runs]
  if not configs:
    return []
  if jax.process_count() > 1:
    raise ValueError(
        "runs trained together use one process; to spread a sweep over "
        f"{jax.process_count()} hosts, give each its --shard=i/n instead")
  for config in configs:
    validate(config)
  _check_together(configs)
  for config, workdir in runs:
    train._check_workdir(Path(workdir), config)
  log = progress or logging.info
  first = configs[0]
  train_split, test_split = train._load_splits(first)
  num_train, num_test = len(train_split.labels), len(test_split.labels)
  batch_size = first.batch_size
  steps_per_epoch = num_train // batch_size
  if steps_per_epoch < 1:
    raise ValueError(f"batch_size {batch_size} exceeds the {num_train} "
                     "training examples")
  for config, workdir in runs:
    Path(workdir).mkdir(parents=True, exist_ok=True)
    (Path(workdir) / "config.json").write_text(
        config.to_json_best_effort(indent=2))

  seeds = sorted({config.seed for config in configs})
  keys = {seed: jax.random.split(jax.random.key(seed)) for seed in seeds}
  members = {}
  for i, config in enumerate(configs):
    members.setdefault((config.model.factorization, config.seed), []).append(i)
  input_shape = train_split.images.shape[1:]
  groups = [_Group(configs, indices, input_shape, keys[seed][0])
            for (_, seed), indices in members.items()]
  seed_of = [seeds.index(configs[g.indices[0]].seed) for g in groups]
  # Position of each run in the concatenated per-run outputs.
  column = np.argsort(np.concatenate([g.indices for g in groups]))

  tx = train.make_optimizer(first, steps_per_epoch)
  images, labels = jnp.asarray(train_split.images), jnp.asarray(
      train_split.labels)
  steps = [jax.vmap(train.make_step(g.graphdef, tx),
                    in_axes=(0, 0, 0, None, None)) for g in groups]
  evaluations = [jax.vmap(train.make_evaluation(first, g.eval_graphdef),
                          in_axes=(0, 0, None, None, None)) for g in groups]

  @jax.jit
  def train_chunk(states, orders, chunk):
    """Steps `chunk` of every run; orders (seeds, examples)."""

    def train_step(states, step):
      new, losses, correct = [], [], []
      for group_step, seed, (params, rest, opt_state) in zip(steps, seed_of,
                                                              states):
        index = jax.lax.dynamic_slice_in_dim(orders[seed], step * batch_size,
                                             batch_size)
        x, y = train.normalize(images[index], first), labels[index]
        params, rest, opt_state, loss, logits = group_step(
            params, rest, opt_state, x, y)
        new.append((params, rest, opt_state))
        losses.append(loss)
        correct.append(jnp.sum(jnp.argmax(logits, -1) == y, axis=-1))
      return tuple(new), (jnp.concatenate(losses), jnp.concatenate(correct))

    states, (losses, correct) = jax.lax.scan(train_step, states, chunk,
                                             unroll=2)
    finite = jnp.isfinite(losses)
    bad = jnp.where(jnp.all(finite, axis=0), -1,
                    chunk[jnp.argmin(finite, axis=0)])
    return states, losses.sum(0), correct.sum(0), bad

  @jax.jit
  def evaluate(states, x_all, y_all, mask):
    losses, correct = zip(*(
        evaluation(params, rest, x_all, y_all, mask)
        for evaluation, (params, rest, _) in zip(evaluations, states)))
    return jnp.concatenate(losses), jnp.concatenate(correct)

  test_batches = tuple(jnp.asarray(a) for a in train._eval_batches(
      test_split, first.eval_batch_size))
  num_runs = len(configs)
  state = {"groups": [(g.params, g.rest, jax.vmap(tx.init)(g.params))
                      for g in groups],
           "position": np.zeros(2, np.int64),
           "sums": train._zero_sums((num_runs,)),
           "diverged": np.full(num_runs, -1, np.int64)}
  name = hashlib.sha256(" ".join(run_key(c) for c in configs).encode())
  checkpoints, state, epoch, step = train._resume(
      Path(state_dir) / name.hexdigest()[:12], state, steps_per_epoch, log)
  histories = [train._history(Path(w), epoch - 1) for _, w in runs]
  writers = [train._MetricWriter(Path(w)) for _, w in runs]
  steps_per_call = min(first.steps_per_call, steps_per_epoch)

  def save(epoch, step):
    state["position"] = np.array([epoch, step], np.int64)
    checkpoints.save((epoch - 1) * steps_per_epoch + step,
                     args=ocp.args.StandardSave(state))

  log(f"training {num_runs} runs together in {len(groups)} groups")
  with train._sigterm_requests_stop() as stop:
    while epoch <= first.num_epochs:
      epoch_orders = jnp.stack([
          train.epoch_order(keys[seed][1], epoch, num_train) for seed in seeds])
      if step == 0:
        state["sums"] = train._zero_sums((num_runs,))
      start = last_log = time.perf_counter()
      seconds = float(state["sums"]["seconds"])
      while step < steps_per_epoch:
        end = min((step // steps_per_call + 1) * steps_per_call,
                  steps_per_epoch)
        state["groups"], loss, correct, bad = train_chunk(
            tuple(state["groups"]), epoch_orders, jnp.arange(step, end))
        state["groups"] = list(state["groups"])
        bad = np.asarray(bad)[column]
        newly = (bad >= 0) & (state["diverged"] < 0)
        state["diverged"] = np.where(
            newly, (epoch - 1) * steps_per_epoch + bad, state["diverged"])
        for i in np.flatnonzero(newly):
          log(f"run {runs[i][1]} diverged at epoch {epoch}, step {bad[i]}")
        sums = state["sums"]
        sums["loss"] = sums["loss"] + np.asarray(loss)[column]
        sums["correct"] = sums["correct"] + np.asarray(correct)[column]
        step = end
        now = time.perf_counter()
        sums["seconds"] = np.asarray(seconds + now - start)
        if stop.is_set() and step < steps_per_epoch:
          save(epoch, step)
          checkpoints.wait_until_finished()
          raise train.Preempted(
              f"SIGTERM: saved epoch {epoch}, step {step} of {num_runs} runs "
              "trained together; rerun the same command to resume")
        if now - last_log > 30:
          log(f"epoch {epoch} step {step}/{steps_per_epoch}: "
              f"{step * num_runs / float(sums['seconds']):.0f} run-steps/s")
          last_log = now
      test_loss, test_correct = (np.asarray(a)[column] for a in evaluate(
          tuple(state["groups"]), *test_batches))
      sums = state["sums"]
      for i in range(num_runs):
        if state["diverged"][i] >= 0:
          continue
        metrics = train.epoch_metrics(
            epoch, float(sums["loss"][i]), int(sums["correct"][i]),
            float(test_loss[i]), float(test_correct[i]),
            float(sums["seconds"]) / num_runs, steps_per_epoch, batch_size,
            num_test)
        histories[i].append(metrics)
        writers[i].write(epoch * steps_per_epoch, metrics)
      ok = [h[-1]["test_accuracy"] for h in histories if h]
      log(f"epoch {epoch}/{first.num_epochs} of {num_runs} runs in "
          f"{float(sums['seconds']):.0f} s: test accuracy "
          f"{min(ok, default=math.nan):.4f}-{max(ok, default=math.nan):.4f}")
      save(epoch, steps_per_epoch)
      if stop.is_set() and epoch < first.num_epochs:
        checkpoints.wait_until_finished()
        raise train.Preempted(
            f"SIGTERM: saved epoch {epoch} of {num_runs} runs trained "
            "together; rerun the same command to resume")
      epoch, step = epoch + 1, 0
  checkpoints.wait_until_finished()
  checkpoints.close()
  for writer in writers:
    writer.close()

  rows = [None] * num_runs
  total_steps = first.num_epochs * steps_per_epoch
  for group, (params, rest, _) in zip(groups, state["groups"]):
    for member, (i, counts) in enumerate(zip(group.indices, group.counts)):
      config, workdir = runs[i]
      if state["diverged"][i] >= 0:
        rows[i] = train.failed_row(config)
        continue
      own_params, own_rest = group.unpadded(member, params, rest)
      with ocp.CheckpointManager(
          (Path(workdir) / "checkpoints").absolute(),
          options=ocp.CheckpointManagerOptions(create=True)) as manager:
        manager.save(total_steps, args=ocp.args.StandardSave(
            {"params": own_params, "rest": own_rest}))
      rows[i] = train.result_row(config, counts, histories[i])
      (Path(workdir) / "result.json").write_text(
          json.dumps(rows[i], indent=2))
  return rows
