"""The decomposition shoot-out on the compression experiment's CNN
(`cpac_jax.models.CNN`, Fashion-MNIST): its four 3x3 convs after the first
(32->32, 32->64, 64->64, 64->128: 138,240 weights) as CP kernels (CPConv),
Tucker-2 kernels (TuckerConv) and tensor trains (TTConv), each trained from
scratch at matched budgets of those weights (rank fractions 0.5, 0.1, 0.01:
2x, 10x and 110x-134x), against the dense net; 3 seeds each. The first conv
(1 -> 32, 288 weights) and the classifier stay dense.

Every net trains as the compression experiment's
(`configs/compress_fashion_mnist.py`: Adam, cosine decay, batch 128), for 2
epochs (all 30 runs in about an hour on 2 cores), at the peak rate 3e-3
that experiment's "select" preset chose, on held-out training images, for
training Tucker-2 from scratch; one rate for all families, so nothing here
is tuned per family or on the test set.

  python -m cpac_jax.sweep --config=configs/shootout_cnn_fashion_mnist.py \\
      --workdir=experiments/shootout_cnn_fashion_mnist
  python scripts/shootout_table.py experiments/shootout_cnn_fashion_mnist
"""

from cpac_jax.config import base_config

FRACTIONS = [0.5, 0.1, 0.01]
FAMILIES = ["cp", "tucker", "tt"]


def get_config(preset: str = ""):
  """`preset` "quick": the 0.1 budget and dense, 1 seed, 1 epoch on 1,024
  training images."""
  config = base_config()
  config.name = "shootout_cnn_fashion_mnist"
  config.dataset.name = "fashion_mnist"
  config.model.name = "cnn"
  config.model.rank = 0.1               # a float: the sweep sets fractions
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 3e-3
  config.optimizer.schedule = "cosine"
  config.num_epochs = 2
  config.batch_size = 128
  config.steps_per_call = 12
  config.unroll = True                  # XLA's CPU convs are slow in loops
  config.eval_batch_size = 500
  seeds, fractions = [0, 1, 2], FRACTIONS
  if preset == "quick":
    config.num_train_examples, config.num_test_examples = 1024, 1000
    config.num_epochs = 1
    seeds, fractions = [0], [0.1]
  elif preset:
    raise ValueError(f"unknown preset {preset!r}; the only one is 'quick'")
  config.sweep = tuple(  # a seed's runs together: a partial sweep is usable
      group for seed in seeds for group in (
          {"model.factorization": FAMILIES, "model.rank": fractions,
           "seed": [seed]},
          {"model.factorization": ["dense"], "seed": [seed]}))
  return config
