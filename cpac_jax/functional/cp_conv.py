"""The CP convolution (CPAC-Conv) as pure functions: forward and
multiply-adds."""

import math
from collections.abc import Sequence

import jax

from cpac_jax import tensor
from cpac_jax.functional.conv import (
  ConvGeometry,
  conv,
  dense_conv_flops,
  depthwise_along,
  lowering_saving,
  output_shape,
  pointwise,
)
from cpac_jax.functional.implementation import choose

__all__ = ["cp_conv", "cp_conv_flops"]


def cp_conv_flops(input_shape: Sequence[int], out_features: int, rank: int,
                  geometry: ConvGeometry, conv_general_dilated=None
                  ) -> dict[str, int]:
  """Multiply-adds of each path of a rank-`rank` CP conv on an input
  (*batch, *spatial, Cin): "factorized", "reconstructed" (rebuilding the
  kernel included), "dense" (the conv alone), the entries of the
  factorized path's intermediates ("intermediates"), and the multiply-adds
  the reconstructed path's conv saves at the lowering it runs
  (`conv_general_dilated`; None: `conv_lowering`'s pick) as `choose`
  prices it ("reconstructed_saved": `lowering_saving` of "dense")."""
  in_features = input_shape[-1]
  batch, spatial, _, out = output_shape(input_shape, geometry)
  factorized = batch * math.prod(spatial) * in_features * rank
  intermediates = batch * math.prod(spatial) * rank
  sizes = list(spatial)
  for axis, kernel in enumerate(geometry.kernel_size):
    sizes[axis] = out[axis]
    factorized += batch * math.prod(sizes) * kernel * rank
    intermediates += batch * math.prod(sizes) * rank
  factorized += batch * math.prod(out) * rank * out_features
  dense = dense_conv_flops(batch, out, geometry.kernel_size, in_features,
                           out_features)
  rebuild = (math.prod(geometry.kernel_size) * in_features * out_features
             * rank)
  return {"factorized": factorized, "reconstructed": dense + rebuild,
          "dense": dense, "intermediates": intermediates,
          "reconstructed_saved": lowering_saving(
              dense, (batch, *spatial, in_features), geometry,
              conv_general_dilated)}


def cp_conv(x: jax.Array, factors: Sequence[jax.Array],
            geometry: ConvGeometry, *, implementation: str = "auto",
            precision=None,
            conv_general_dilated=None) -> jax.Array:
  """(N, *spatial, Cin) -> (N, *spatial', Cout), no bias, for the kernel
  sum_r s_0[:, r] o ... o a_in[:, r] o a_out[:, r] given as `factors`
  [*spatial (k_i, R), a_in (Cin, R), a_out (Cout, R)].

  "factorized": a 1x1 conv to R channels, a depthwise 1-D conv along each
  spatial axis, a 1x1 conv to Cout; no dense kernel is formed.
  "reconstructed": rebuild the kernel, one dense conv by
  `conv_general_dilated` (None: `conv.conv_lowering` of Cin). "auto": the
  cheaper (`choose`).

  Example:
    >>> import jax.numpy as jnp
    >>> geometry = ConvGeometry((3, 3), (1, 1), "SAME", (1, 1))
    >>> factors = [jnp.ones((3, 2)), jnp.ones((3, 2)), jnp.ones((4, 2)),
    ...            jnp.ones((5, 2))]
    >>> cp_conv(jnp.ones((1, 6, 6, 4)), factors, geometry).shape
    (1, 6, 6, 5)
  """
  *spatial, in_factor, out_factor = factors
  flops = cp_conv_flops(x.shape, out_factor.shape[0], in_factor.shape[1],
                        geometry, conv_general_dilated)
  _, _, pads, _ = output_shape(x.shape, geometry)
  if choose(implementation, flops) == "reconstructed":
    return conv(x, tensor.cp_to_tensor(factors), geometry.strides, pads,
                geometry.dilation, precision=precision,
                conv_general_dilated=conv_general_dilated)
  h = pointwise(x, in_factor, precision=precision)
  for axis, factor in enumerate(spatial):
    h = depthwise_along(h, factor, axis + 1, geometry.strides[axis],
                        geometry.dilation[axis], pads[axis])
  return pointwise(h, out_factor.T, precision=precision)
