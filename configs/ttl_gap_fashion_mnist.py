"""configs/ttl_gap_mnist.py on Fashion-MNIST: why TTL (5, 5, 10) trails its
dense twin, and what narrows the gap.

  python -m cpac_jax.sweep --config=configs/ttl_gap_fashion_mnist.py:select \
      --workdir=experiments/ttl_gap_fashion_mnist/select
  python -m cpac_jax.sweep --config=configs/ttl_gap_fashion_mnist.py \
      --workdir=experiments/ttl_gap_fashion_mnist
"""

from configs import ttl_gap_mnist


def get_config(preset: str = ""):
  return ttl_gap_mnist.build("fashion_mnist", preset)
