"""cpac_jax: neural networks compressed by CP and Tucker decompositions.

`cpac_jax.tensor` holds the pure-JAX tensor algebra, `cpac_jax.layers` the
Flax NNX layers built on it.
"""

from cpac_jax import layers, tensor
from cpac_jax.layers import count_params

__all__ = ["count_params", "layers", "tensor"]
__version__ = "0.1.0"
