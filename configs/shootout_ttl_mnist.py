"""The decomposition shoot-out on the TTL MLP (MNIST): its 784 -> 300 hidden
layer as a Tucker tensor (TuckerDense on (28, 28) -> (300,)), as a TT-matrix
(TTDense on (4, 7, 4, 7) -> (3, 4, 5, 5)) and as a low-rank dense product
(nnx.Linear 784 -> b -> 300), at matched budgets of the hidden layer's
235,200 weights (fractions 0.5, 0.1, 0.03, 0.01: 2x to 100x), against the
dense layer; 3 seeds each.

Every family trains as `configs/ttl_mnist.py` does (Adam 3e-3, cosine, 20
epochs, batch 64): no hyperparameter is tuned per family here, so none is
chosen on the test set in this experiment (that learning rate itself was
picked on TTL (5, 5, 10) against test accuracy, as
experiments/ttl_mnist/README.md says).

  python -m cpac_jax.sweep --config=configs/shootout_ttl_mnist.py \
      --workdir=experiments/shootout_ttl_mnist
"""

import math

from configs import ttl_mnist

FRACTIONS = [0.5, 0.1, 0.03, 0.01]
TT_SHAPES = {"in_shape": (4, 7, 4, 7), "hidden_shape": (3, 4, 5, 5)}
DENSE_WEIGHTS = 784 * 300


def get_config(preset: str = ""):
  """`preset` "quick": the 0.1 budget and dense, 1 seed, 2 epochs."""
  config = ttl_mnist.get_config()
  config.name = "shootout_ttl_mnist"
  seeds, fractions = [0, 1, 2], FRACTIONS
  if preset == "quick":
    config.num_epochs = 2
    seeds, fractions = [0], [0.1]
  elif preset:
    raise ValueError(f"unknown preset {preset!r}; the only one is 'quick'")
  # The low-rank product 784 -> b -> 300 holds 1,084 b weights.
  bottlenecks = [math.floor(f * DENSE_WEIGHTS / (784 + 300))
                 for f in fractions]
  config.sweep = (
      {"model.factorization": ["tucker"], "model.rank": fractions,
       "seed": seeds},
      {"model.factorization": ["tt"], "model.rank": fractions,
       "model.kwargs": [TT_SHAPES], "seed": seeds},
      *({"model.factorization": ["dense"], "model.kwargs": [{"bottleneck": b}],
         "seed": seeds} for b in bottlenecks),
      {"model.factorization": ["dense"], "seed": seeds},
  )
  return config
