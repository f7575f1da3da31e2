"""TTL MLP on Fashion-MNIST: configs/ttl_mnist.py on the other data set
(784 -> 300 as a Tucker tensor (28, 28, 300); ranks (5, 5, 10) give the TTL
paper's 66.63x).

  python -m cpac_jax.sweep --config=configs/ttl_fashion_mnist.py \
      --workdir=experiments/ttl_fashion_mnist
"""

from configs import ttl_mnist


def get_config(preset: str = ""):
  config = ttl_mnist.get_config(preset)
  config.name = "ttl_fashion_mnist"
  config.dataset.name = "fashion_mnist"
  return config
