"""Flax NNX layers whose weights are held as CP, Tucker or tensor-train
decompositions: thin shells that own the parameters and call
`cpac_jax.functional`."""

from cpac_jax.functional import (
  auto_conv_general_dilated,
  patches_conv,
  winograd_conv,
)
from cpac_jax.layers._conv import (
  conv_geometry,
  effective_kernel,
  from_conv_kwargs,
)
from cpac_jax.layers._dense import linear_features
from cpac_jax.layers.batch_norm import BatchNorm
from cpac_jax.layers.cp_conv import CPConv
from cpac_jax.layers.low_rank_dense import LowRankDense
from cpac_jax.layers.low_rank_embed import LowRankEmbed
from cpac_jax.layers.params import count_params
from cpac_jax.layers.tt_conv import TTConv
from cpac_jax.layers.tt_dense import TTDense
from cpac_jax.layers.tucker_conv import TuckerConv
from cpac_jax.layers.tucker_dense import TuckerDense

__all__ = ["BatchNorm", "CPConv", "LowRankDense", "LowRankEmbed", "TTConv",
           "TTDense", "TuckerConv", "TuckerDense", "auto_conv_general_dilated",
           "conv_geometry", "count_params", "effective_kernel",
           "from_conv_kwargs", "linear_features", "patches_conv",
           "winograd_conv"]
