"""CPAC-CNN, one CP conv layer, MNIST: the CPAC-Conv paper's one-layer net,
CPAC(1->8, 3x3) -> maxpool 2 -> ReLU -> FC(1352->10), trained as the
two-layer net (configs/cpac_mnist.py); CP ranks 1..6 against dense.

  python -m cpac_jax.sweep --config=configs/cpac_mnist_1layer.py \
      --workdir=experiments/cpac_mnist_1layer
"""

from configs import cpac_mnist


def get_config(preset: str = ""):
  return cpac_mnist.build(preset, num_layers=1)
