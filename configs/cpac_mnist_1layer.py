"""CPAC-CNN, one CP conv layer, MNIST: the CPAC-Conv paper's one-layer net,
CPAC(1->8, 3x3) -> maxpool 2 -> ReLU -> FC(1352->10), trained as the
two-layer net (configs/cpac_mnist.py); CP ranks 1..6 against dense.

  python -m cpac_jax.sweep --config=configs/cpac_mnist_1layer.py \
      --workdir=experiments/cpac_mnist_1layer
"""

import pathlib
import runpy

_TWO_LAYER = runpy.run_path(str(pathlib.Path(__file__).with_name(
    "cpac_mnist.py")))


def get_config(preset: str = ""):
  return _TWO_LAYER["build"](preset, num_layers=1)
