"""The Tucker convolution (Tucker-2, or full Tucker) as pure functions:
forward and multiply-adds."""

import math
from collections.abc import Sequence

import jax

from cpac_jax import tensor
from cpac_jax.functional.conv import (
  ConvGeometry,
  conv,
  dense_conv_flops,
  lowering_saving,
  output_shape,
  pointwise,
)
from cpac_jax.functional.implementation import choose

__all__ = ["tucker_conv", "tucker_conv_flops", "tucker_conv_modes"]


def tucker_conv_modes(num_spatial: int, factorize_spatial: bool
                      ) -> tuple[int, ...]:
  """The kernel modes that carry a factor: the channel modes (Tucker-2), or
  every mode (full Tucker)."""
  if factorize_spatial:
    return tuple(range(num_spatial + 2))
  return (num_spatial, num_spatial + 1)


def tucker_conv_flops(input_shape: Sequence[int], out_features: int,
                      rank: Sequence[int], geometry: ConvGeometry,
                      conv_general_dilated=None) -> dict[str, int]:
  """Multiply-adds of each path of a Tucker conv with ranks `rank` (one per
  factorized mode, the channel ranks last) on an input (*batch, *spatial,
  Cin), as `cp_conv_flops` counts them; "factorized_saved" is what its
  core conv saves at its lowering."""
  in_features = input_shape[-1]
  batch, spatial, _, out = output_shape(input_shape, geometry)
  r_in, r_out = rank[-2:]
  intermediates = batch * (math.prod(spatial) * r_in + math.prod(out) * r_out)
  core = dense_conv_flops(batch, out, geometry.kernel_size, r_in, r_out)
  factorized = (batch * math.prod(spatial) * in_features * r_in + core
                + batch * math.prod(out) * r_out * out_features)
  dense = dense_conv_flops(batch, out, geometry.kernel_size, in_features,
                           out_features)
  # Rebuilding the kernel costs at most one pass over it per rank entry.
  rebuild = (math.prod(geometry.kernel_size) * in_features * out_features
             * max(rank))
  return {"factorized": factorized, "reconstructed": dense + rebuild,
          "dense": dense, "intermediates": intermediates,
          "factorized_saved": lowering_saving(
              core, (batch, *spatial, r_in), geometry, conv_general_dilated),
          "reconstructed_saved": lowering_saving(
              dense, (batch, *spatial, in_features), geometry,
              conv_general_dilated)}


def tucker_conv(x: jax.Array, core: jax.Array, factors: Sequence[jax.Array],
                geometry: ConvGeometry, *, implementation: str = "auto",
                precision=None,
                conv_general_dilated=None) -> jax.Array:
  """(N, *spatial, Cin) -> (N, *spatial', Cout), no bias, for the kernel
  core x_in U_in x_out U_out (Tucker-2: core (*k, r_in, r_out), `factors`
  [U_in (Cin, r_in), U_out (Cout, r_out)]) or, with one factor per spatial
  mode before them, the full Tucker kernel.

  "factorized": a 1x1 conv to r_in channels, a small dense conv r_in ->
  r_out (its kernel rebuilt from the core and spatial factors), a 1x1 conv
  to Cout. "reconstructed": rebuild the kernel, one dense conv. "auto": the
  cheaper (`choose`). `conv_general_dilated`: the dense conv's lowering
  (None: `conv.conv_lowering` of its input channels, so the small core
  conv of a low-rank kernel runs as `patches_conv` on the CPU).
  """
  num_spatial = len(geometry.kernel_size)
  modes = tucker_conv_modes(num_spatial, len(factors) > 2)
  *spatial, in_factor, out_factor = factors
  rank = [f.shape[1] for f in factors]
  flops = tucker_conv_flops(x.shape, out_factor.shape[0], rank, geometry,
                            conv_general_dilated)
  _, _, pads, _ = output_shape(x.shape, geometry)
  if choose(implementation, flops) == "reconstructed":
    kernel = tensor.multi_mode_dot(core, factors, modes)
    return conv(x, kernel, geometry.strides, pads, geometry.dilation,
                precision=precision, conv_general_dilated=conv_general_dilated)
  small = tensor.multi_mode_dot(core, spatial, range(len(spatial)))
  h = pointwise(x, in_factor, precision=precision)
  h = conv(h, small, geometry.strides, pads, geometry.dilation,
           precision=precision, conv_general_dilated=conv_general_dilated)
  return pointwise(h, out_factor.T, precision=precision)
