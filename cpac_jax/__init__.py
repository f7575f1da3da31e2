"""cpac_jax: neural networks compressed by CP and Tucker decompositions.

`cpac_jax.tensor` holds the pure-JAX tensor algebra, `cpac_jax.functional`
the factorized contractions built on it, `cpac_jax.layers` the Flax NNX
layers that hold their parameters, and `compress` (`cpac_jax.compression`)
swaps a trained model's layers for them; the rest (data, models, training,
sweeps, reports, interpretation) loads on first use, as it pulls in optax,
orbax and TFDS.
"""

import importlib

from cpac_jax import compression, functional, layers, tensor
from cpac_jax.compression import compress
from cpac_jax.layers import count_params

_LAZY = ("checkpoint", "config", "data", "distributed", "extensions",
         "interpret", "models", "optimizers", "process", "report", "rundir",
         "stats", "sweep", "train", "vectorized")

__all__ = ["compress", "compression", "count_params", "functional", "layers",
           "tensor", *_LAZY]
__version__ = "0.1.0"


def __getattr__(name: str):
  if name in _LAZY:
    return importlib.import_module(f"cpac_jax.{name}")
  raise AttributeError(f"module 'cpac_jax' has no attribute {name!r}")
