"""What the training loop can be extended with: each feature one object.

The loop (`cpac_jax.train`) trains groups of runs epoch by epoch and knows
no feature by name. An extension says, each part optional:

- `init_model(model, run)`: what it does to a run's initial model (the
  student decomposed from its teacher);
- `example_arrays()`: per-example arrays it adds beside the labels, indexed
  like the training images (the teacher's logits); the objective then gets
  (labels, *arrays) as its target;
- `objective(objective)`: how it wraps the per-example loss;
- `carry_init(params)`, `carry_update(carry, grads)`: what it sums through
  the scan of steps, checkpointed with the state (under the key "taps");
  `result(carry)` is what the run's Outcome reports of it.

`for_run` chains them from a run's config, in one place, and
`check` refuses the combinations that can't train, in one place, before
any compute. Extensions of a run are applied in the order listed.
"""

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from cpac_jax import compression, data, distributed, models, rundir
from cpac_jax.config import compress_budget, compressing, has_teacher, setting

__all__ = ["CompressTeacher", "Distillation", "Extension", "FromTeacher",
           "GradientTap", "check", "compress_kwargs", "cross_entropy",
           "distillation_loss", "for_run"]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """The per-example loss every run trains on unless an extension wraps it;
  in float32 (or wider) whatever the model computes in (`config.dtype`)."""
  return optax.softmax_cross_entropy_with_integer_labels(
      _at_least_float32(logits), labels)


def _at_least_float32(logits: jax.Array) -> jax.Array:
  """`logits` cast up to float32 if narrower: a softmax's exponentials and
  sums lose too much in bfloat16 or float16 (float16 overflows past
  65504)."""
  return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))


class Extension:
  """A feature of training; every hook's default leaves the loop as is."""

  carries = False  # whether carry_init/carry_update sum something

  def init_model(self, model: nnx.Module, run: tuple[ml_collections
                                                     .ConfigDict, Path]
                 ) -> nnx.Module:
    del run
    return model

  def example_arrays(self) -> tuple[np.ndarray, ...]:
    return ()

  def objective(self, objective: Callable) -> Callable:
    return objective

  def carry_init(self, params) -> Any:
    del params
    return ()

  def carry_update(self, carry, grads) -> Any:
    del grads
    return carry

  def result(self, carry) -> Any:
    del carry
    return None


class FromTeacher(Extension):
  """The run's factorized layers decomposed from its teacher's trained dense
  ones (model.init "teacher": `models.from_teacher`, at the student's own
  ranks), the other layers copied."""

  def __init__(self, teacher: nnx.Module):
    self.teacher = teacher

  def init_model(self, model, run):
    return models.from_teacher(model, self.teacher)


class CompressTeacher(Extension):
  """The run's model is its teacher compressed (`config.compress`): the
  teacher's layers decomposed under the budget (for their outputs on the
  first compress.calibration_examples training images, if set), or
  (compress.init "random") the same architecture drawn afresh from the
  run's own initial model. Writes the report to the workdir
  (compression.json, which `train.restore` rebuilds the architecture from,
  and compression.md). Given the run's evaluation split (`evaluation`, as
  its epochs are evaluated on: the test set or the held-out validation
  images), a decomposed student is evaluated there before any training,
  and compression.json gains "before_fine_tuning": its accuracy, mean
  cross-entropy, the split's name and size."""

  def __init__(self, teacher: nnx.Module, key: jax.Array,
               images: np.ndarray | None = None, dataset=None,
               evaluation=None):
    self.teacher, self.key = teacher, key
    self.images, self.dataset = images, dataset
    self.evaluation = evaluation

  def init_model(self, model, run):
    config, workdir = run
    block = config.compress
    examples = setting(config, "compress.calibration_examples")
    if examples > len(self.images):
      raise ValueError(
          f"compress.calibration_examples {examples} is more than the "
          f"{len(self.images)} training images; give at most that")
    if block.init == "random":  # the ranks the teacher's weights get
      ranks = compression.allocate(self.teacher, compress_budget(block),
                                   block.factorization,
                                   exclude=tuple(block.exclude),
                                   allocation=block.allocation)
      model, report = compression.compress(
          model, init="random", rngs=nnx.Rngs(params=self.key),
          **compress_kwargs(config, ranks))
    else:  # allocated and decomposed in one call, one calibration pass
      calibration = [data.normalize(self.images[i:min(i + 64, examples)],
                                    self.dataset.mean, self.dataset.std)
                     for i in range(0, examples, 64)] if examples else None
      model, report = compression.compress(self.teacher, key=self.key,
                                           calibration=calibration,
                                           **compress_kwargs(config, None))
    written = report.to_dict()
    if block.init != "random" and self.evaluation is not None:
      written["before_fine_tuning"] = self._evaluate(model, config)
    if distributed.writes_files():
      (workdir / "compression.json").write_text(
          json.dumps(written, indent=2))
      (workdir / "compression.md").write_text(report.table() + "\n")
    return model

  def _evaluate(self, model: nnx.Module, config) -> dict:
    """The compressed student's accuracy and mean cross-entropy on the
    run's evaluation split, in eval mode."""
    student = nnx.clone(model)
    student.eval()
    logits = _logits(student, self.evaluation.images, self.dataset)
    labels = np.asarray(self.evaluation.labels)
    return {"accuracy": float(np.mean(np.argmax(logits, -1) == labels)),
            "loss": float(np.mean(cross_entropy(logits, labels))),
            "evaluated_on": rundir.evaluated_on(config),
            "examples": int(len(labels))}


def compress_kwargs(config: ml_collections.ConfigDict,
                    ranks: dict | None) -> dict:
  """`compression.compress`'s arguments for `config.compress` at `ranks`
  (None: allocated under its budget)."""
  block = config.compress
  return dict(budget=compress_budget(block),
              factorization=block.factorization,
              exclude=tuple(block.exclude), allocation=block.allocation,
              ranks=ranks,
              implementation=config.model.get("implementation", "auto"))


class Distillation(Extension):
  """Trains on (1 - weight) * cross-entropy + weight * T^2 * cross-entropy
  against the teacher's outputs softened by T (`distillation_loss`), the
  teacher's logits on the training images computed once."""

  def __init__(self, teacher: nnx.Module, teacher_dataset,
               images: np.ndarray, weight: float, temperature: float):
    self.weight, self.temperature = weight, temperature
    self.logits = _logits(teacher, images, teacher_dataset)

  def example_arrays(self):
    return (self.logits,)

  def objective(self, objective):
    del objective  # the hard term is part of the distillation loss
    return distillation_loss(self.weight, self.temperature)


def distillation_loss(weight: float, temperature: float):
  """(logits, (labels, teacher logits)) -> per-example loss
  (1 - weight) * cross-entropy + weight * T^2 * cross-entropy against the
  teacher's outputs softened by T (Hinton et al. 2015; T^2 keeps the soft
  term's gradients on the scale of the hard one's)."""

  def loss(logits, target):
    labels, teacher = target
    logits, teacher = _at_least_float32(logits), _at_least_float32(teacher)
    soft = optax.softmax_cross_entropy(logits / temperature,
                                       jax.nn.softmax(teacher / temperature))
    return ((1 - weight) * cross_entropy(logits, labels)
            + weight * temperature**2 * soft)

  return loss


class GradientTap(Extension):
  """Sums `tap(grads)` over every training step; the Outcome's `tap`."""

  carries = True

  def __init__(self, tap: Callable[[Any], Any]):
    self.tap = tap

  def carry_init(self, params):
    return jax.tree.map(jnp.zeros_like, self.tap(params))

  def carry_update(self, carry, grads):
    return jax.tree.map(jnp.add, carry, self.tap(grads))

  def result(self, carry):
    return jax.tree.map(np.asarray, carry)


def check(configs: Sequence[ml_collections.ConfigDict], *, together: bool,
          tap: bool = False, state_dir: bool = True, own_data: bool = True,
          names: Sequence[str] = ()) -> None:
  """Refuses, before any compute, runs that can't train as asked: runs
  trained together (`together`) on several processes, without a state_dir
  (`state_dir` False) or with a gradient tap (`tap`), with a teacher, or
  of a data set that draws each seed's own split (`own_data`: the runs
  load their configs' data) with several seeds. `names` name the runs
  in the message (a sweep's run names).

  Raises:
    ValueError: naming the run and what to do instead.
  """
  if not together:
    return
  if jax.process_count() > 1:
    raise ValueError(
        "runs trained together use one process; to spread a sweep over "
        f"{jax.process_count()} hosts, give each its --shard=i/n instead")
  if tap or not state_dir:
    raise ValueError("runs trained together need a state_dir, and take no "
                     "tap")
  for i, config in enumerate(configs):
    if has_teacher(config):
      name = f"run {names[i]}" if names else "runs with a teacher"
      raise ValueError(
          f"{name} learns from a teacher (model.init 'teacher', "
          "distill_weight > 0 or compress): such runs train one at a time; "
          "run the sweep without --vectorize")
  first = configs[0]
  if (own_data and data.INFO[first.dataset.name].seeded_split
      and len({c.seed for c in configs}) > 1):
    raise ValueError(
        f"{first.dataset.name} draws each seed's own train/test split, so "
        "runs of different seeds can't share batches; train them a seed "
        "at a time (as sweep --vectorize does)")


def for_run(config: ml_collections.ConfigDict, teacher, teacher_config,
            images: np.ndarray, key: jax.Array, tap=None,
            evaluation=None) -> list[Extension]:
  """The extensions `config` asks for, in the order they apply: the
  student from its teacher, distillation, the gradient tap. `teacher` and
  `teacher_config` are the restored teacher's model and config (None
  without one), `images` the training images, `key` the run's
  initialisation key, `evaluation` the split its epochs are evaluated on
  (with .images and .labels)."""
  chosen = []
  if compressing(config):
    chosen.append(CompressTeacher(teacher, key, images, config.dataset,
                                  evaluation))
  elif setting(config, "model.init") == "teacher":
    chosen.append(FromTeacher(teacher))
  if setting(config, "distill_weight") > 0:
    chosen.append(Distillation(teacher, teacher_config.dataset, images,
                               setting(config, "distill_weight"),
                               setting(config, "distill_temperature")))
  if tap is not None:
    chosen.append(GradientTap(tap))
  return chosen


def _logits(model: nnx.Module, images: np.ndarray, dataset,
            batch_size: int = 1000) -> np.ndarray:
  """`model`'s logits on uint8 `images`, normalised as `dataset` says; in
  float32 (or wider) whatever the model computes in."""
  graphdef, state = nnx.split(model)
  apply = jax.jit(lambda state, x: _at_least_float32(nnx.merge(
      graphdef, state)(data.normalize(x, dataset.mean, dataset.std))))
  return np.concatenate([np.asarray(apply(state, images[i:i + batch_size]))
                         for i in range(0, len(images), batch_size)])
