"""Compress a trained CNN (`cpac_jax.models.CNN`, five 3x3 convs of 32-128
channels with batch norm) on Fashion-MNIST, then fine-tune it; against the
same compressed architecture trained from scratch, and the dense net.

For each seed: the dense net (4 epochs); at each budget (the fraction of
the four compressed convs' weights kept; the first conv and the
classifier stay dense), its Tucker-2 compression with the ranks shared
globally and uniformly (`cpac_jax.compress`), each fine-tuned 3 epochs;
and the global allocation's architecture trained from scratch for the
dense net's 4 epochs plus the fine-tuning's 3. Beside them, CP in place of
Tucker-2: its global compression fine-tuned at both budgets, and its
architecture from scratch at 0.1, for 7 epochs and for the fine-tuning's 3.
The "data_aware" preset, in its own workdir with its own dense nets: the
global Tucker-2 and CP compressions at both budgets, plain against
data-aware (decomposed for the convs' outputs on the first 1,024 training
images, compress.calibration_examples), each fine-tuned as above.

  python -m cpac_jax.sweep --config=configs/compress_fashion_mnist.py:select \
      --workdir=experiments/compress_fashion_mnist/selection
  python -m cpac_jax.sweep --config=configs/compress_fashion_mnist.py \
      --workdir=experiments/compress_fashion_mnist
  python -m cpac_jax.sweep --config=configs/compress_fashion_mnist.py:data_aware \
      --workdir=experiments/compress_fashion_mnist/data_aware

The fine-tuning's peak rate and distillation weight, and the scratch
runs' peak rate, are those the "select" preset scored best on 6,000
training images held out of training (seed 0; `FINE_TUNE`, `SCRATCH`,
`CP_FINE_TUNE`, `CP_SHORT_SCRATCH`),
never on the test set; the data-aware runs take the plain runs' rates,
unselected for them. Adam, cosine decay; the dense net at 1e-3, fixed.
"""

from cpac_jax.config import base_config, compress_config

DENSE_EPOCHS, TUNE_EPOCHS = 4, 3
# Chosen by the "select" preset on validation (selection/README.md).
FINE_TUNE = {"optimizer.learning_rate": [3e-3], "distill_weight": [0.0]}
SCRATCH = {"optimizer.learning_rate": [3e-3]}
# CP in place of Tucker-2, global ranks: its fine-tuning rate chosen by the
# same "select" preset (distillation left off, as it did not help Tucker);
# CP from scratch takes SCRATCH's rate, chosen for Tucker-2, unselected.
CP_FINE_TUNE = {"optimizer.learning_rate": [3e-3], "distill_weight": [0.0]}
# CP from scratch for the fine-tuning's epochs alone: chosen by "select".
CP_SHORT_SCRATCH = {"optimizer.learning_rate": [3e-3]}
CALIBRATION_EXAMPLES = 1024


def get_config(preset: str = ""):
  """`preset` "select": seed 0, budget 0.1, global ranks, on 6,000 held-out
  training images, over the fine-tuning's rate and distillation weight and
  the scratch runs' rate; "data_aware": plain against data-aware global
  compressions, fine-tuned; "quick": 1 epoch each on 1024 examples, budget
  0.1, 1 seed."""
  config = base_config()
  config.name = "compress_fashion_mnist"
  config.dataset.name = "fashion_mnist"
  config.model.name = "cnn"
  config.model.factorization = "dense"
  config.model.rank = 0.1               # unused: the convs are compressed
  config.compress = compress_config()
  config.compress.factorization = ""    # each sweep group sets its own
  config.compress.exclude = ("convs/0", "out")
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 1e-3
  config.optimizer.schedule = "cosine"
  config.batch_size = 128
  config.steps_per_call = 12
  config.unroll = True                  # XLA's CPU convs are slow in loops
  config.eval_batch_size = 500
  seeds, budgets = [0, 1, 2], [0.1, 0.05]
  dense_epochs, tune_epochs = DENSE_EPOCHS, TUNE_EPOCHS
  fine_tune, scratch, cp_tune = FINE_TUNE, SCRATCH, CP_FINE_TUNE
  cp_short = CP_SHORT_SCRATCH
  allocations = ["global", "uniform"]
  aware = {}                            # plain decompositions alone
  if preset == "select":
    config.dataset.validation_examples = 6000
    seeds, budgets, allocations = [0], [0.1], ["global"]
    fine_tune = {"optimizer.learning_rate": [1e-3, 3e-3],
                 "distill_weight": [0.0, 0.5]}
    scratch = {"optimizer.learning_rate": [1e-3, 3e-3]}
    cp_tune = {"optimizer.learning_rate": [1e-3, 3e-3],
               "distill_weight": [0.0]}
    cp_short = {"optimizer.learning_rate": [1e-3, 3e-3]}
  elif preset == "data_aware":
    allocations = ["global"]
    aware = {"compress.calibration_examples": [0, CALIBRATION_EXAMPLES]}
  elif preset == "quick":
    config.num_train_examples = 1024
    config.num_test_examples = 1000
    seeds, budgets, dense_epochs, tune_epochs = [0], [0.1], 1, 1
  elif preset:
    raise ValueError(f"unknown preset {preset!r}; valid: 'select', "
                     "'data_aware', 'quick'")
  config.num_epochs = dense_epochs
  teacher = f"num_epochs={dense_epochs}, optimizer.learning_rate=0.001"
  sweep = []
  for seed in seeds:  # a seed's runs together, its dense teacher first
    sweep += [
        {"seed": [seed]},
        {"compress.factorization": ["tucker"], "compress.budget": budgets,
         "compress.allocation": allocations, **aware,
         "num_epochs": [tune_epochs], **fine_tune,
         "teacher": [teacher], "seed": [seed]},
        {"compress.factorization": ["cp"], "compress.budget": budgets,
         "compress.allocation": ["global"], **aware,
         "num_epochs": [tune_epochs], **cp_tune,
         "teacher": [teacher], "seed": [seed]},
    ]
    if aware:  # compressions alone, no architectures from scratch
      continue
    sweep += [
        {"compress.factorization": ["tucker"], "compress.budget": budgets,
         "compress.init": ["random"],
         "num_epochs": [dense_epochs + tune_epochs], **scratch,
         "teacher": [teacher], "seed": [seed]},
    ]
    if preset != "select":  # CP's own architecture from scratch, at 10x
      sweep.append(
          {"compress.factorization": ["cp"], "compress.budget": budgets[:1],
           "compress.init": ["random"],
           "num_epochs": [dense_epochs + tune_epochs], **SCRATCH,
           "teacher": [teacher], "seed": [seed]})
    # ... and for the fine-tuning's epochs alone, at 10x.
    sweep.append(
        {"compress.factorization": ["cp"], "compress.budget": budgets[:1],
         "compress.init": ["random"], "num_epochs": [tune_epochs], **cp_short,
         "teacher": [teacher], "seed": [seed]})
  config.sweep = tuple(sweep)
  return config
