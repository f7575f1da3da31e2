"""Why TTL (5, 5, 10) trails its dense twin, and what narrows the gap, on
MNIST (configs/ttl_gap_fashion_mnist.py: the same on Fashion-MNIST).

The (5, 5, 10) layer's 784 x 300 matrix has rank at most 10. Rows that
separate the causes: the rank-10 limit alone ((28, 28, 10); a dense
784 -> 10 -> 300 net), the 25-dimensional input projection alone
((5, 5, 25)); and rows that narrow the gap at exactly 66.63x: a longer
schedule, the trained dense twin's layer decomposed (TuckerDense.from_linear
by HOOI) and fine-tuned, distillation from the dense twin, and both.

Two stages, each its own workdir:

  # 1. hyperparameters, on 10,000 examples held out of the training set
  python -m cpac_jax.sweep --config=configs/ttl_gap_mnist.py:select \
      --workdir=experiments/ttl_gap_mnist/select
  # 2. each option at the learning rate stage 1 chose, 3 seeds, test set
  python -m cpac_jax.sweep --config=configs/ttl_gap_mnist.py \
      --workdir=experiments/ttl_gap_mnist

Stage 2 gives each option the learning rate with the best final-epoch
validation accuracy in stage 1 (`CHOSEN_RATES`, which this config declares
rather than reads: `chosen_rates` computes them from a stage-1 workdir, and
tests/test_configs.py fails unless the declared ones are those of the
committed experiments/ttl_gap_<dataset>/select); no test-set number takes
part in any choice.
"""

import pathlib

from configs import ttl_mnist
from cpac_jax import rundir
from cpac_jax.config import expand, run_key

EPOCHS, LONGER = 20, 60
LEARNING_RATES = (1e-3, 3e-3, 1e-2, 3e-2)
FINE_TUNE_RATES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)  # from a trained layer
VALIDATION_EXAMPLES = 10_000
# Stage 1's teacher: the dense twin at configs/ttl_mnist.py's rate (the one
# choice made before stage 1); stage 2's: the twin at its chosen rate.
SELECT_TEACHER_RATE = 3e-3
# Stage 2's learning rate of each option, (MNIST, Fashion-MNIST): stage 1's
# choice (`chosen_rates`).
_CHOSEN = {
    "dense twin": (3e-3, 1e-3),
    "tucker (5, 5, 10)": (1e-2, 3e-3),
    "tucker (5, 5, 10), 60 epochs": (3e-3, 3e-3),
    "tucker (28, 28, 10)": (3e-3, 1e-3),
    "tucker (5, 5, 25)": (3e-3, 3e-3),
    "dense, bottleneck 10": (3e-3, 3e-3),
    "decomposed twin, fine-tuned": (1e-2, 3e-3),
    "distilled from twin": (1e-2, 1e-2),
    "decomposed twin, distilled": (1e-2, 1e-2),
}
CHOSEN_RATES = {dataset: {option: rates[i] for option, rates in _CHOSEN.items()}
                for i, dataset in enumerate(("mnist", "fashion_mnist"))}
# Distillation as Hinton et al. (2015) suggest; not tuned.
DISTILL_WEIGHT, TEMPERATURE = 0.5, 4.0
# option -> the fields it sets (the rest: TTL (5, 5, 10), configs/ttl_mnist.py)
OPTIONS = {
    "dense twin": {"model.factorization": "dense"},
    "tucker (5, 5, 10)": {},
    "tucker (5, 5, 10), 60 epochs": {"num_epochs": LONGER},
    "tucker (28, 28, 10)": {"model.rank": (28, 28, 10)},
    "tucker (5, 5, 25)": {"model.rank": (5, 5, 25)},
    "dense, bottleneck 10": {"model.factorization": "dense",
                             "model.kwargs": {"bottleneck": 10}},
    "decomposed twin, fine-tuned": {"model.init": "teacher"},
    "distilled from twin": {"distill_weight": DISTILL_WEIGHT,
                            "distill_temperature": TEMPERATURE},
    "decomposed twin, distilled": {"model.init": "teacher",
                                   "distill_weight": DISTILL_WEIGHT,
                                   "distill_temperature": TEMPERATURE},
}


def _uses_teacher(fields: dict) -> bool:
  return fields.get("model.init") == "teacher" or "distill_weight" in fields


def rates_of(fields: dict) -> tuple[float, ...]:
  return FINE_TUNE_RATES if fields.get("model.init") == "teacher" \
      else LEARNING_RATES


def sweep_group(fields: dict, rate: float, teacher_rate: float, seeds
                ) -> dict:
  """One sweep group: the option's fields at learning rate `rate`; its
  teacher, if it has one, the dense twin trained at `teacher_rate`."""
  group = {field: [value] for field, value in fields.items()}
  if _uses_teacher(fields):
    group["teacher"] = [
        f"model.factorization=dense,optimizer.learning_rate={teacher_rate!r},"
        f"num_epochs={EPOCHS}"]
  return {**group, "num_epochs": [fields.get("num_epochs", EPOCHS)],
          "optimizer.learning_rate": [rate], "seed": list(seeds)}


def chosen_rates(select, select_dir: pathlib.Path) -> dict:
  """option -> the learning rate of its best final-epoch validation
  accuracy among the results of stage 1 (config `select`) in
  `select_dir`."""
  rows = {r["key"]: r for r in rundir.read_results(select_dir)}
  chosen = {}
  for option, fields in OPTIONS.items():
    scored = []
    for rate in rates_of(fields):
      key = one_run_key(select, sweep_group(fields, rate,
                                            SELECT_TEACHER_RATE, [0]))
      if key not in rows:
        raise ValueError(
            f"{select_dir} has no stage-1 result for {option!r} at learning "
            f"rate {rate} (run key {key}): run the 'select' preset first "
            "(see configs/ttl_gap_mnist.py)")
      if rows[key].get("status") == "ok":  # a diverged rate can't be chosen
        scored.append((float(rows[key]["test_accuracy"]), rate))
    if not scored:
      raise ValueError(f"{select_dir}: every rate of {option!r} diverged")
    chosen[option] = max(scored)[1]
  return chosen


def one_run(config, group: dict):
  """The one run that `group` (one value per field) makes of `config`."""
  one = config.copy_and_resolve_references()
  one.sweep = (group,)
  (_, run), = expand(one)
  return run


def one_run_key(config, group: dict) -> str:
  return run_key(one_run(config, group))


def build(dataset: str, preset: str = ""):
  """`preset` "select": stage 1, one seed per option and learning rate, on
  validation examples; "": stage 2."""
  config = ttl_mnist.get_config()
  config.name = f"ttl_gap_{dataset}"
  config.dataset.name = dataset
  if preset == "select":
    config.dataset.validation_examples = VALIDATION_EXAMPLES
    groups = [sweep_group(fields, rate, SELECT_TEACHER_RATE, [0])
              for fields in OPTIONS.values() for rate in rates_of(fields)]
  elif preset == "":
    rates = CHOSEN_RATES[dataset]
    groups = [sweep_group(fields, rates[option], rates["dense twin"],
                          [0, 1, 2]) for option, fields in OPTIONS.items()]
  else:
    raise ValueError(f"unknown preset {preset!r}; choose '' or 'select'")
  config.sweep = tuple(groups)
  return config


def get_config(preset: str = ""):
  return build("mnist", preset)
