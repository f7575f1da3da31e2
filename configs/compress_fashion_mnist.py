"""Compress a trained CNN (`cpac_jax.models.CNN`, five 3x3 convs of 32-128
channels with batch norm) on Fashion-MNIST, then fine-tune it; against the
same compressed architecture trained from scratch, and the dense net.

For each seed: the dense net (2 epochs); at each budget (the fraction of
the four compressed convs' weights kept; the first conv and the
classifier stay dense), its Tucker-2 compression with the ranks shared
globally and uniformly (`cpac_jax.compress`), each fine-tuned 1 epoch; and
the global allocation's architecture trained from scratch for the dense
net's 2 epochs plus the fine-tuning's 1.

  python -m cpac_jax.sweep --config=configs/compress_fashion_mnist.py \
      --workdir=experiments/compress_fashion_mnist

No hyperparameter was tuned: Adam, cosine decay, 1e-3 for the dense and
scratch runs and 3e-4 for fine-tuning, fixed before any run.
"""

from cpac_jax.config import base_config, compress_config


def get_config(preset: str = ""):
  """`preset` "quick": 1 epoch each on 1024 examples, budget 0.1, 1 seed."""
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
  seeds, budgets, dense_epochs, tune_epochs = [0, 1, 2], [0.1, 0.05], 2, 1
  if preset == "quick":
    config.num_train_examples = 1024
    config.num_test_examples = 1000
    seeds, budgets, dense_epochs, tune_epochs = [0], [0.1], 1, 1
  elif preset:
    raise ValueError(f"unknown preset {preset!r}; the only one is 'quick'")
  config.num_epochs = dense_epochs
  teacher = f"num_epochs={dense_epochs}, optimizer.learning_rate=0.001"
  sweep = []
  for seed in seeds:  # a seed's runs together, its dense teacher first
    sweep += [
        {"seed": [seed]},
        {"compress.factorization": ["tucker"], "compress.budget": budgets,
         "compress.allocation": ["global", "uniform"],
         "num_epochs": [tune_epochs], "optimizer.learning_rate": [3e-4],
         "teacher": [teacher], "seed": [seed]},
        {"compress.factorization": ["tucker"], "compress.budget": budgets,
         "compress.init": ["random"],
         "num_epochs": [dense_epochs + tune_epochs],
         "teacher": [f"num_epochs={dense_epochs}"], "seed": [seed]},
    ]
  config.sweep = tuple(sweep)
  return config
