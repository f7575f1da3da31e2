"""The decomposition shoot-out on the CPAC-CNN (MNIST): its second conv
(8 -> 8, 3x3: 576 weights) as a CP kernel (the paper's CPConv), a Tucker-2
kernel (TuckerConv) and a tensor train (TTConv) at matched budgets of its
weights (fractions 0.5, 0.25, 0.15, 0.05: 2x to about 25x), against the
dense net; 3 seeds each.

The first conv (1 -> 8, 72 weights) stays dense in every net: at rank 1 a
CP or TT kernel of it still holds 15 weights and a Tucker one 18 (at most
4.8x), so factorizing it too would cap every budget near 4x. Everything
else trains as the CPAC paper does (`configs/cpac_mnist.py`: Adam 1e-4, 10
epochs, batch size 1, cpac_jax's default init); nothing is tuned per
family, so nothing here is chosen on the test set.

  python -m cpac_jax.sweep --config=configs/shootout_cpac_mnist.py \\
      --workdir=experiments/shootout_cpac_mnist --vectorize
"""

from configs import cpac_mnist

FRACTIONS = [0.5, 0.25, 0.15, 0.05]
FAMILIES = ["cp", "tucker", "tt"]


def get_config(preset: str = ""):
  """`preset` "quick": the 0.15 budget and dense, 1 seed, 1 epoch at batch
  size 32 and learning rate 1e-3."""
  config = cpac_mnist.get_config()
  config.name = "shootout_cpac_mnist"
  config.paper, config.paper_loss = {}, {}
  config.model.kwargs = {"factorize_first": False}
  seeds, fractions = [0, 1, 2], FRACTIONS
  if preset == "quick":
    config.batch_size, config.num_epochs = 32, 1
    config.optimizer.learning_rate = 1e-3
    seeds, fractions = [0], [0.15]
  elif preset:
    raise ValueError(f"unknown preset {preset!r}; the only one is 'quick'")
  config.sweep = (
      {"model.factorization": FAMILIES, "model.rank": fractions,
       "seed": seeds},
      {"model.factorization": ["dense"], "seed": seeds},
  )
  return config
