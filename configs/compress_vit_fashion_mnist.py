"""Compress a trained Vision Transformer (`cpac_jax.models.ViT`: 4 blocks of
width 128 and 4 heads on 7x7 patches) on Fashion-MNIST, then fine-tune it.

Its attention projections (`nnx.LinearGeneral`) and MLP weights
(`nnx.Linear`) are compressed, the patch embedding and the classifier kept
dense, at 2x, 4x and 10x fewer of those weights (budgets 0.5, 0.25, 0.1),
by "svd" and "tucker" (`cpac_jax.compress`), plain against data-aware
(decomposed for the layers' outputs on the first 1,024 training images,
compress.calibration_examples) and global against uniform allocation;
each fine-tuned 2 epochs, against the global plain architecture trained
from scratch for the dense net's epochs plus those 2. "tt" is left out:
its TT-matrix takes no LinearGeneral of several axes, so it would leave
the attention dense. Adam, cosine decay; the dense net 10 epochs at 1e-3.

  python -m cpac_jax.sweep \\
      --config=configs/compress_vit_fashion_mnist.py:select \\
      --workdir=experiments/compress_vit_fashion_mnist/selection
  python -m cpac_jax.sweep --config=configs/compress_vit_fashion_mnist.py \\
      --workdir=experiments/compress_vit_fashion_mnist

The fine-tuning's and the scratch runs' peak rates are what the "select"
preset (seed 0, budget 0.25, on 6,000 training images held out) scores
best, never the test set (selection/README.md): FINE_TUNE and SCRATCH.
"""

from cpac_jax.config import base_config, compress_config

DENSE_EPOCHS, TUNE_EPOCHS = 10, 2
# Chosen by the "select" preset on validation (selection/README.md).
FINE_TUNE = {"optimizer.learning_rate": [1e-3]}
SCRATCH = {"optimizer.learning_rate": [1e-3]}
CALIBRATION_EXAMPLES = 1024
FACTORIZATIONS = ["svd", "tucker"]


def get_config(preset: str = ""):
  """`preset` "select": seed 0, budget 0.25, on 6,000 held-out training
  images, over the fine-tuning's and the scratch runs' rates; "quick": a
  1-block ViT, 1 epoch each on 512 examples, 1 seed."""
  config = base_config()
  config.name = "compress_vit_fashion_mnist"
  config.dataset.name = "fashion_mnist"
  config.model.name = "vit"
  config.model.factorization = "dense"
  config.model.rank = 0                 # unused: compressed after training
  config.model.kwargs = {"depth": 4, "width": 128, "heads": 4, "patch": 7}
  config.compress = compress_config()
  config.compress.factorization = ""    # each sweep group sets its own
  config.compress.exclude = ("patches", "head")
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 1e-3
  config.optimizer.schedule = "cosine"
  config.batch_size = 128
  config.eval_batch_size = 500
  seeds, budgets = [0, 1, 2], [0.5, 0.25, 0.1]
  dense_epochs, tune_epochs = DENSE_EPOCHS, TUNE_EPOCHS
  fine_tune, scratch = FINE_TUNE, SCRATCH
  calibrations = [0, CALIBRATION_EXAMPLES]
  allocations = ["global", "uniform"]
  if preset == "select":
    config.dataset.validation_examples = 6000
    seeds, budgets, allocations = [0], [0.25], ["global"]
    calibrations = [0]
    fine_tune = {"optimizer.learning_rate": [3e-4, 1e-3]}
    scratch = {"optimizer.learning_rate": [1e-3, 3e-3]}
  elif preset == "quick":
    config.num_train_examples = 512
    config.num_test_examples = 500
    config.model.kwargs = {"depth": 1, "width": 32, "heads": 2, "patch": 7}
    seeds, budgets, dense_epochs, tune_epochs = [0], [0.25], 1, 1
    calibrations = [0, 128]
    fine_tune = scratch = {"optimizer.learning_rate": [1e-3]}
  elif preset:
    raise ValueError(f"unknown preset {preset!r}; valid: 'select', 'quick'")
  elif fine_tune is None or scratch is None:
    raise ValueError("compress_vit_fashion_mnist: the fine-tuning and "
                     "scratch rates are not chosen yet; run the 'select' "
                     "preset and set FINE_TUNE and SCRATCH to its choice")
  config.num_epochs = dense_epochs
  teacher = f"num_epochs={dense_epochs}, optimizer.learning_rate=0.001"
  sweep = []
  for seed in seeds:  # a seed's runs together, its dense teacher first
    sweep.append({"seed": [seed]})
    for factorization in FACTORIZATIONS:
      sweep += [
          {"compress.factorization": [factorization],
           "compress.budget": budgets, "compress.allocation": allocations,
           "compress.calibration_examples": calibrations,
           "num_epochs": [tune_epochs], **fine_tune,
           "teacher": [teacher], "seed": [seed]},
          {"compress.factorization": [factorization],
           "compress.budget": budgets, "compress.init": ["random"],
           "num_epochs": [dense_epochs + tune_epochs], **scratch,
           "teacher": [teacher], "seed": [seed]},
      ]
  config.sweep = tuple(sweep)
  return config
