"""The config schema: defaults every experiment config starts from, the
checks that run before any compute, the run key, a config's sweep expanded
into runs, and the model a config describes.

A config's `sweep` is a sequence of groups; each group maps dotted config
fields to lists of values and stands for their cartesian product:

  config.sweep = (
      {"model.factorization": ["cp"], "model.rank": [1, 2, 3], "seed": [0, 1]},
      {"model.factorization": ["dense"], "seed": [0, 1]},
  )
"""

import ast
import difflib
import hashlib
import itertools
import json
import math
import re
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from flax import nnx
from ml_collections import config_dict

from cpac_jax import compression, data, models, optimizers

__all__ = ["base_config", "build_model", "compress_budget", "compress_config",
           "compressing", "computed_fields", "describe_differences",
           "differing_fields", "expand", "has_teacher", "override",
           "parse_value", "run_key", "setting", "teacher_config", "validate"]

# Fields added to the schema after results were made with it: in the base
# as placeholders (None: unset), each read through `setting` as its default
# below while unset, and left out of the run key while unset, so results
# from before they existed keep their keys. A config or a command line may
# set each of them on any config (`validate` refuses a value that means
# nothing there). model.kwargs, the model class's own arguments, is set by
# configs only.
OPTIONAL_FIELDS = {"optimizer.schedule": optimizers.DEFAULT_SCHEDULE,
                   "model.kwargs": {}, "model.init": models.DEFAULT_INIT,
                   "dataset.validation_examples": 0,
                   "teacher": "", "distill_weight": 0.0,
                   "distill_temperature": 4.0,
                   "dtype": models.DEFAULT_DTYPE,
                   "compress.calibration_examples": 0}
# Fields that don't change what a run computes.
_NOT_IN_KEY = ("sweep", "paper", "paper_loss", "dataset.data_dir",
               "steps_per_call", "unroll", "xla_cpu_ynn_fusions",
               "eval_batch_size", "distributed")


def base_config() -> ml_collections.ConfigDict:
  """Every field an experiment config may set, with its default."""
  config = ml_collections.ConfigDict()
  config.name = ""                      # experiment name, in results.csv
  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = "mnist"         # mnist | fashion_mnist | cifar10
  # Raw files or a TFDS dir; unset: $CPAC_DATA_DIR, else data/.
  config.dataset.data_dir = config_dict.placeholder(str)
  config.dataset.mean = 0.5             # inputs become (x / 255 - mean) / std
  config.dataset.std = 0.5
  # 0, or N > 0: the last N training examples are held out and every
  # evaluation (the "test_*" metrics, the row's evaluated_on "validation")
  # is on them, never on the test set; for choosing hyperparameters.
  config.dataset.validation_examples = config_dict.placeholder(int)
  config.model = ml_collections.ConfigDict()
  config.model.name = "cpac_cnn_2"      # a key of cpac_jax.models.MODELS
  config.model.factorization = "cp"     # cp | tucker | dense
  # config.model.rank: each config sets it, which fixes its type for
  # command-line overrides: an int, a tuple, a float fraction or "same".
  config.model.implementation = "auto"  # auto | factorized | reconstructed
  # "default", another init its model offers (models.INITS; the CPAC nets:
  # "official"), or "teacher": the factorized layers decomposed from the
  # teacher's trained dense ones (`models.from_teacher`), the other layers
  # copied, then trained.
  config.model.init = config_dict.placeholder(str)
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adam"        # adam | adamw | sgd | momentum
  config.optimizer.learning_rate = 1e-3  # peak rate
  # "constant", or "cosine": decay to 0 over the run.
  config.optimizer.schedule = config_dict.placeholder(str)
  config.batch_size = 64                # examples per step
  config.eval_batch_size = 1000         # examples per eval step
  config.num_epochs = 10                # passes over the training set
  config.num_train_examples = 0         # first N training examples; 0: all
  config.num_test_examples = 0          # first N test examples; 0: all
  config.steps_per_call = 1000          # train steps per compiled call
  # Unroll each call's steps (and the eval pass's batches) instead of
  # looping over them: XLA's CPU convolutions run ~15x slower inside a loop
  # (a 5-conv CNN's step: 1.8 s looped, 0.12 s unrolled). For conv nets on
  # a CPU, with a small steps_per_call; compiles grow with it.
  config.unroll = False
  # XLA's YNNPACK fusions in the compiled train and eval steps on the CPU
  # (this jaxlib makes them by default). Off, each of its fused ops runs as
  # XLA's own code instead: on 2 CPU cores the seed-0 CPAC sweep took 211 s
  # against 265 s with them (experiments/benchmarks/sweep.md, the sharded
  # modes of `cpac_jax.benchmarks.sweep`), and XLA's conv forward+backward up
  # to 1.78x less time (experiments/benchmarks/lowering.md; 11.6x on the
  # AVX2-only CPU of an earlier run, in its git history).
  config.xla_cpu_ynn_fusions = False
  # The compute dtype of every layer of the model (models.DTYPES):
  # "float32" (unset), "bfloat16" or "float16". Parameters, batch-norm
  # statistics and optimizer state stay float32, the gradients reach them
  # in float32, and the loss is computed on the logits cast to float32.
  # float16 has no loss scaling: small gradients may underflow to zero.
  config.dtype = config_dict.placeholder(str)
  config.seed = 0                       # seeds init and data order
  # Several hosts: with initialize, jax.distributed.initialize() joins them
  # before any computation; the fields left unset it detects itself on
  # Cloud TPU pods, SLURM and other clusters it knows.
  config.distributed = ml_collections.ConfigDict()
  config.distributed.initialize = False
  config.distributed.coordinator_address = config_dict.placeholder(str)
  config.distributed.num_processes = config_dict.placeholder(int)
  config.distributed.process_id = config_dict.placeholder(int)
  # A teacher (optional): config.teacher, the overrides "field=value, ..."
  # that turn this run's config into its teacher's (`teacher_config`), e.g.
  # "model.factorization=dense": a finished run of the same sweep, found by
  # its key beside this run's workdir. Used by model.init "teacher" and by
  # distillation: config.distill_weight w in (0, 1] trains on
  # (1 - w) * cross-entropy + w * T^2 * cross-entropy against the teacher's
  # softened outputs, T = config.distill_temperature (Hinton et al. 2015);
  # a distilled run's train loss is that objective, its test loss plain
  # cross-entropy.
  config.teacher = config_dict.placeholder(str)
  config.distill_weight = config_dict.placeholder(float)
  config.distill_temperature = config_dict.placeholder(float)
  # `compress_config`: a run that compresses its teacher, a trained model
  # (`cpac_jax.compress`), then fine-tunes it; off unless its factorization
  # is set.
  config.compress = compress_config()
  config.sweep = ()                     # see `expand`
  config.paper = {}                     # the paper's accuracy by rank
  config.paper_loss = {}                # the paper's test loss by rank
  return config


def compress_config() -> ml_collections.ConfigDict:
  """The `config.compress` block a config adds to compress its teacher.

  With `factorization` "" (the default) nothing is compressed, and the
  block is left out of the run key. Otherwise the run's model is its
  teacher's trained model (`config.teacher`, the overrides that make the
  teacher's config; "" for the same config without compression, which is
  the teacher's own) with its layers replaced by `cpac_jax.compress`,
  then trained as any run: the fine-tuning. init "random" builds the same
  compressed architecture from scratch instead: the ranks are allocated on
  the teacher's weights, every parameter is drawn anew.
  """
  block = ml_collections.ConfigDict()
  block.factorization = ""              # "" (off) | cp | tucker | svd | tt
  # The fraction of weights kept, in (0, 1]; or their count, a whole
  # number > 1 (the field is a float: 14960 reads back as 14960.0,
  # `compress_budget` makes it an int again).
  block.budget = 0.1
  block.allocation = "global"           # global | uniform
  block.init = "decomposed"             # decomposed | random
  block.exclude = ()                    # paths or globs left dense
  # The first N training images, decomposed for the layers' outputs on
  # (cpac_jax.compress's calibration, in batches of 64); unset: 0, the
  # weights alone.
  block.calibration_examples = config_dict.placeholder(int)
  return block


def compress_budget(block: ml_collections.ConfigDict) -> float | int:
  """`block.budget` (`compress_config`) as `cpac_jax.compress` takes it: a
  fraction in (0, 1], or a whole number above 1 as the int count of
  weights it stands for."""
  budget = block.budget
  if isinstance(budget, float) and budget > 1 and budget.is_integer():
    return int(budget)
  return budget


def compressing(config: ml_collections.ConfigDict) -> bool:
  """Whether `config` compresses its teacher (`compress_config`)."""
  return bool(config.get("compress", {}).get("factorization", ""))


def has_teacher(config: ml_collections.ConfigDict) -> bool:
  """Whether a run of `config` needs its teacher's finished run."""
  return bool(setting(config, "teacher")) or compressing(config)


def _choose(value, valid, field: str) -> None:
  if value not in valid:
    close = difflib.get_close_matches(str(value), [str(v) for v in valid], 2)
    hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
    raise ValueError(
        f"unknown {field} {value!r}{hint}; choose one of {tuple(valid)}")


def validate(config: ml_collections.ConfigDict,
             info: data.DatasetInfo | None = None) -> None:
  """Raise ValueError naming the first bad field of `config`.

  Checks names, sizes and ranks: the model is built abstractly (no compute),
  so a rank a layer can't honour fails here with that layer's message.
  `info`: the facts of data the caller brings itself (then
  `dataset.name` is not looked up).
  """
  if info is None:
    _choose(config.dataset.name, data.DATASETS, "dataset.name")
  _choose(config.model.name, models.MODELS, "model.name")
  models.check(config.model)
  _choose(setting(config, "dtype"), models.DTYPES, "dtype")
  _choose(config.optimizer.name, optimizers.OPTIMIZERS, "optimizer.name")
  _choose(setting(config, "optimizer.schedule"), optimizers.SCHEDULES,
          "optimizer.schedule")
  for field in ("batch_size", "eval_batch_size", "num_epochs",
                "steps_per_call"):
    value = config.get(field)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f"{field} must be a positive int, got {value!r}")
  for field in ("num_train_examples", "num_test_examples"):
    value = config.get(field) or 0
    if not isinstance(value, int) or value < 0:
      raise ValueError(
          f"{field} must be an int >= 0 (0: all), got {value!r}")
  validation = setting(config, "dataset.validation_examples")
  if type(validation) is not int or validation < 0:
    raise ValueError("dataset.validation_examples must be an int >= 0 (0: "
                     f"evaluate on the test set), got {validation!r}")
  _check_teacher(config)
  if "compress" in config:
    _check_compress(config.compress)
    examples = config.compress.get("calibration_examples") or 0
    limit = config.get("num_train_examples") or 0
    if limit and examples > limit:
      raise ValueError(
          f"compress.calibration_examples {examples} is more than "
          f"num_train_examples {limit}, the training images it is drawn "
          "from; give at most that")
  devices = jax.device_count()
  if config.batch_size % devices:
    raise ValueError(
        f"batch_size {config.batch_size} doesn't divide over the {devices} "
        f"devices that share each batch; use a multiple of {devices}, or "
        "make fewer devices visible (e.g. CUDA_VISIBLE_DEVICES)")
  rate = config.optimizer.learning_rate
  if not (isinstance(rate, (int, float)) and 0 < rate < math.inf):
    raise ValueError(
        f"optimizer.learning_rate must be a positive finite number, got "
        f"{rate!r}")
  for field in ("mean", "std"):
    values = np.ravel(np.asarray(config.dataset[field], dtype=float))
    if not np.all(np.isfinite(values)) or (field == "std"
                                           and np.any(values <= 0)):
      raise ValueError(
          f"dataset.{field} must be finite{' and positive' * (field == 'std')}"
          f" (a number or one per channel), got {config.dataset[field]!r}")
  nnx.eval_shape(lambda: build_model(config, info))


def _check_compress(block: ml_collections.ConfigDict) -> None:
  _choose(block.factorization, ("", *compression.FACTORIZATIONS),
          "compress.factorization")
  _choose(block.allocation, compression.ALLOCATIONS, "compress.allocation")
  _choose(block.init, compression.INITS, "compress.init")
  compression.check_budget(compress_budget(block))
  examples = block.get("calibration_examples") or 0
  if isinstance(examples, bool) or not isinstance(examples, int) or (
      examples < 0):
    raise ValueError("compress.calibration_examples must be an int >= 0 "
                     f"(0: no calibration), got {examples!r}")
  if examples and block.init != "decomposed":
    raise ValueError(f"compress.calibration_examples {examples} decomposes "
                     f"for the outputs, but compress.init {block.init!r} "
                     "decomposes nothing; give init 'decomposed' or 0")
  if not all(isinstance(f, str) for f in block.exclude):
    raise ValueError("compress.exclude must be a tuple of layer paths or "
                     f"globs, got {block.exclude!r}")


def _check_teacher(config: ml_collections.ConfigDict) -> None:
  teacher = setting(config, "teacher")
  weight = setting(config, "distill_weight")
  temperature = setting(config, "distill_temperature")
  if not (isinstance(weight, (int, float)) and 0 <= weight <= 1):
    raise ValueError(f"distill_weight must be in [0, 1], got {weight!r}")
  if not (isinstance(temperature, (int, float)) and temperature > 0
          and math.isfinite(temperature)):
    raise ValueError(
        f"distill_temperature must be a positive number, got {temperature!r}")
  uses = setting(config, "model.init") == "teacher" or weight > 0
  if uses and not teacher and not compressing(config):
    raise ValueError(
        "model.init 'teacher' and distill_weight > 0 need config.teacher, the "
        "overrides that make the teacher's config (e.g. "
        "'model.factorization=dense')")
  if teacher and not uses and not compressing(config):
    raise ValueError(
        f"config.teacher {teacher!r} is set but unused: set model.init "
        "'teacher', distill_weight > 0 or compress.factorization, or drop it")
  if has_teacher(config):
    twin = teacher_config(config)  # unknown fields raise here
    if compressing(config) and twin.model.to_dict() != config.model.to_dict():
      raise ValueError(
          f"a compressing run's model is its teacher's, compressed; "
          f"config.teacher {teacher!r} changes the model block")
    if setting(config, "model.init") == "teacher" and (
        twin.model.name != config.model.name
        or twin.model.factorization != "dense"):
      raise ValueError(
          f"model.init 'teacher' decomposes a dense twin of the same model; "
          f"config.teacher {teacher!r} makes a {twin.model.factorization} "
          f"{twin.model.name!r}")
    validate(twin)


def teacher_config(config: ml_collections.ConfigDict
                   ) -> ml_collections.ConfigDict:
  """The config of `config`'s teacher: `config` with its `teacher`
  overrides applied, and no teacher, distillation or teacher init of its
  own."""
  teacher = config.copy_and_resolve_references()
  overrides = setting(teacher, "teacher")
  with teacher.unlocked():
    for field in ("teacher", "distill_weight", "distill_temperature"):
      teacher[field] = None
    if teacher.model.init == "teacher":
      teacher.model.init = None
    teacher.compress.factorization = ""
    teacher.sweep = ()
  items = re.split(r",\s*(?=[A-Za-z_][\w.]*=)", overrides.strip())
  for item in items if overrides.strip() else ():
    field, equals, text = item.partition("=")
    if not equals:
      raise ValueError(f"config.teacher {overrides!r}: {item!r} is not of "
                       "the form field=value")
    override(teacher, field.strip(), parse_value(text))
  return teacher


def parse_value(text: str):
  """A value as written on a command line: a Python literal (5, 0.5,
  (5, 5, 10)), else the text itself (same, dense)."""
  try:
    return ast.literal_eval(text.strip())
  except (ValueError, SyntaxError):
    return text.strip()


def build_model(config: ml_collections.ConfigDict,
                info: data.DatasetInfo | None = None,
                key: jax.Array | None = None) -> nnx.Module:
  """The config's model for the data `info` describes (by default its
  dataset's), its parameters drawn from `key`."""
  info = info or data.INFO[config.dataset.name]
  rngs = nnx.Rngs(params=key) if key is not None else nnx.Rngs(0)
  return models.build(config.model, info.image_shape, info.num_classes, rngs,
                      seed=config.seed, dtype=setting(config, "dtype"))


def computed_fields(config: ml_collections.ConfigDict,
                    ignore: Sequence[str] = ()) -> dict:
  """`config` as a dict, less the fields that don't change what a run
  computes (where data lives, how steps are grouped, sweeps, paper) and
  the dotted fields `ignore`."""
  flat = json.loads(config.to_json_best_effort(sort_keys=True))
  if not compressing(config):
    flat.pop("compress", None)
  unset = [field for field in OPTIONAL_FIELDS if _get(flat, field) is None]
  for field in (*_NOT_IN_KEY, *unset, *ignore):
    *parents, leaf = field.split(".")
    node = flat
    for parent in parents:
      node = node.get(parent, {})
    node.pop(leaf, None)
  return flat


def setting(config: ml_collections.ConfigDict, field: str):
  """The value of a dotted `field` of `config`; an optional field left unset
  (None, or absent from an older config) reads as its default
  (`OPTIONAL_FIELDS`)."""
  node = config
  for part in field.split("."):
    node = node.get(part) if node is not None else None
  return OPTIONAL_FIELDS.get(field) if node is None else node


def _get(flat: dict, field: str):
  """A dotted field of a nested dict; None where it is absent."""
  for part in field.split("."):
    flat = flat.get(part) if isinstance(flat, dict) else None
  return flat


def run_key(config: ml_collections.ConfigDict) -> str:
  """A hash of everything in `config` that changes what the run computes."""
  text = json.dumps(computed_fields(config), sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def differing_fields(a: ml_collections.ConfigDict,
                     b: ml_collections.ConfigDict,
                     ignore: Sequence[str] = ()) -> list[str]:
  """The dotted fields in which two configs would compute differently,
  besides `ignore`; empty if they compute the same."""
  return sorted(_differences(computed_fields(a, ignore),
                             computed_fields(b, ignore)))


def describe_differences(there: ml_collections.ConfigDict,
                         here: ml_collections.ConfigDict,
                         ignore: Sequence[str] = ()) -> str:
  """The fields `differing_fields` finds, each with its two values:
  "num_epochs (20 there, 10 here), seed (1 there, 0 here)"."""
  a, b = computed_fields(there, ignore), computed_fields(here, ignore)

  def value(flat: dict, field: str):
    for part in field.split("."):
      flat = flat.get(part) if isinstance(flat, dict) else None
    return "unset" if flat is None else json.dumps(flat)

  return ", ".join(f"{f} ({value(a, f)} there, {value(b, f)} here)"
                   for f in sorted(_differences(a, b)))


def _differences(old: dict, new: dict, prefix: str = "") -> set[str]:
  fields = set()
  for key in set(old) | set(new):
    x, y = old.get(key), new.get(key)
    if isinstance(x, dict) and isinstance(y, dict):
      fields |= _differences(x, y, f"{prefix}{key}.")
    elif x != y:
      fields.add(prefix + key)
  return fields


def override(config: ml_collections.ConfigDict, field: str, value) -> None:
  """Set a dotted `field` of `config` to `value`, whatever its type was (a
  CP rank may become a fraction); unknown fields raise ValueError."""
  *parents, leaf = field.split(".")
  node = config
  for parent in parents:
    if parent not in node:
      raise ValueError(f"sweep sets unknown config field {field!r}")
    node = node[parent]
  if leaf not in node and field not in OPTIONAL_FIELDS:
    raise ValueError(f"sweep sets unknown config field {field!r}")
  if isinstance(value, list):
    value = tuple(value)
  # A config from --config is locked; an optional field may still be added.
  with node.ignore_type(), node.unlocked():
    node[leaf] = value


def expand(config: ml_collections.ConfigDict
           ) -> list[tuple[str, ml_collections.ConfigDict]]:
  """(name, config) for every run of the sweep; the config itself if none."""
  runs = []
  for group in config.sweep or ({},):
    fields = list(group)
    for values in itertools.product(*(group[f] for f in fields)):
      run = config.copy_and_resolve_references()
      for field, value in zip(fields, values):
        override(run, field, value)
      name = "-".join(f"{f.rsplit('.', 1)[-1]}={_text(v)}"
                      for f, v in zip(fields, values)) or "run"
      runs.append((name, run))
  return runs


def _text(value) -> str:
  if isinstance(value, (dict, ml_collections.ConfigDict)):
    return ",".join(f"{k}={_text(v)}" for k, v in value.items())
  if isinstance(value, (tuple, list)):
    return "x".join(map(str, value))
  return str(value)
