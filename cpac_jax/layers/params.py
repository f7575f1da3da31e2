"""Parameter counting for any Flax NNX module."""

import jax
from flax import nnx

__all__ = ["count_params"]


def count_params(module: nnx.Module) -> int:
  """Number of trainable parameters (entries of `nnx.Param` variables)."""
  return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
