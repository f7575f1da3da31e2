"""cpac_jax: neural networks compressed by CP and Tucker decompositions.

`cpac_jax.tensor` holds the pure-JAX tensor algebra, `cpac_jax.layers` the
Flax NNX layers built on it; `data`, `models`, `train`, `sweep`, `report`
and `interpret` load on first use (they pull in optax, orbax, TFDS).
"""

import importlib

from cpac_jax import layers, tensor
from cpac_jax.layers import count_params

__all__ = ["count_params", "data", "interpret", "layers", "models", "report",
           "sweep", "tensor", "train"]
__version__ = "0.1.0"

_LAZY = ("config", "data", "interpret", "models", "report", "sweep", "train")


def __getattr__(name: str):
  if name in _LAZY:
    return importlib.import_module(f"cpac_jax.{name}")
  raise AttributeError(f"module 'cpac_jax' has no attribute {name!r}")
