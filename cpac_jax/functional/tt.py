"""Tensor-train layers as pure functions: the TT conv and the TT-matrix
dense layer, forward and multiply-adds."""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from cpac_jax import tensor
from cpac_jax.functional.conv import (
  ConvGeometry,
  conv,
  dense_conv_flops,
  output_shape,
  pointwise,
)
from cpac_jax.functional.implementation import choose
from cpac_jax.functional.tucker_dense import batch_shape

__all__ = ["tt_conv", "tt_conv_flops", "tt_conv_kernel", "tt_dense",
           "tt_dense_flops", "tt_rebuild_flops"]


def tt_rebuild_flops(shape: Sequence[int], ranks: Sequence[int]) -> int:
  """Multiply-adds of `cpac_jax.tensor.tt_to_tensor` for cores over the
  modes `shape` with `ranks`: the left-to-right chain of products."""
  return sum(math.prod(shape[:k]) * ranks[k] * shape[k] * ranks[k + 1]
             for k in range(1, len(shape)))


def tt_conv_kernel(cores: Sequence[jax.Array]) -> jax.Array:
  """The kernel (*kernel_size, Cin, Cout) of a TT conv whose cores run over
  (Cin, *kernel_size, Cout)."""
  full = tensor.tt_to_tensor(cores)
  d = full.ndim
  return jnp.transpose(full, tuple(range(1, d - 1)) + (0, d - 1))


def tt_conv_flops(input_shape: Sequence[int], out_features: int,
                  ranks: Sequence[int], geometry: ConvGeometry
                  ) -> dict[str, int]:
  """Multiply-adds of each path of a TT conv with cores over (Cin,
  *kernel_size, Cout) and TT ranks `ranks` (boundary 1s included) on an
  input (*batch, *spatial, Cin), as `cp_conv_flops` counts them."""
  in_features = input_shape[-1]
  batch, spatial, _, out = output_shape(input_shape, geometry)
  inner = ranks[1:-1]
  factorized = batch * math.prod(spatial) * in_features * inner[0]
  intermediates = batch * math.prod(spatial) * inner[0]
  sizes = list(spatial)
  for axis, kernel in enumerate(geometry.kernel_size):
    sizes[axis] = out[axis]
    factorized += (batch * math.prod(sizes) * kernel * inner[axis]
                   * inner[axis + 1])
    intermediates += batch * math.prod(sizes) * inner[axis + 1]
  factorized += batch * math.prod(out) * inner[-1] * out_features
  dense = dense_conv_flops(batch, out, geometry.kernel_size, in_features,
                           out_features)
  shape = (in_features, *geometry.kernel_size, out_features)
  return {"factorized": factorized,
          "reconstructed": dense + tt_rebuild_flops(shape, ranks),
          "dense": dense, "intermediates": intermediates}


def tt_conv(x: jax.Array, cores: Sequence[jax.Array], geometry: ConvGeometry,
            *, implementation: str = "auto", precision=None,
            conv_general_dilated=None) -> jax.Array:
  """(N, *spatial, Cin) -> (N, *spatial', Cout), no bias, for the kernel
  held as a tensor train with cores over (Cin, *kernel_size, Cout):
  G_in (1, Cin, r_1), G_i (r_i, k_i, r_{i+1}) per spatial axis, G_out (r_d,
  Cout, 1).

  "factorized": a 1x1 conv to r_1 channels, a 1-D conv r_i -> r_{i+1} along
  each spatial axis (a dense conv whose kernel spans one axis), a 1x1 conv
  to Cout; no dense kernel is formed. "reconstructed": rebuild the kernel,
  one dense conv. "auto": the cheaper (`choose`). `conv_general_dilated`:
  the dense convs' lowering (None: `conv.conv_lowering` of their input
  channels).

  Example:
    >>> import jax.numpy as jnp
    >>> geometry = ConvGeometry((3, 3), (1, 1), "SAME", (1, 1))
    >>> cores = [jnp.ones((1, 4, 2)), jnp.ones((2, 3, 2)),
    ...          jnp.ones((2, 3, 2)), jnp.ones((2, 5, 1))]
    >>> tt_conv(jnp.ones((1, 6, 6, 4)), cores, geometry).shape
    (1, 6, 6, 5)
  """
  ranks = [core.shape[0] for core in cores] + [1]
  flops = tt_conv_flops(x.shape, cores[-1].shape[1], ranks, geometry)
  _, _, pads, _ = output_shape(x.shape, geometry)
  if choose(implementation, flops) == "reconstructed":
    return conv(x, tt_conv_kernel(cores), geometry.strides, pads,
                geometry.dilation, precision=precision,
                conv_general_dilated=conv_general_dilated)
  num_spatial = len(geometry.kernel_size)
  h = pointwise(x, cores[0][0], precision=precision)
  for axis, core in enumerate(cores[1:-1]):
    one = [1] * num_spatial
    strides, dilation = list(one), list(one)
    strides[axis] = geometry.strides[axis]
    dilation[axis] = geometry.dilation[axis]
    axis_pads = [(0, 0)] * num_spatial
    axis_pads[axis] = pads[axis]
    kernel_shape = list(one)
    kernel_shape[axis] = core.shape[1]
    kernel = jnp.reshape(jnp.transpose(core, (1, 0, 2)),
                         kernel_shape + [core.shape[0], core.shape[2]])
    h = conv(h, kernel, strides, axis_pads, dilation, precision=precision,
             conv_general_dilated=conv_general_dilated)
  return pointwise(h, cores[-1][..., 0], precision=precision)


def _dense_plan(batch: int, in_shape: Sequence[int],
                out_shape: Sequence[int], ranks: Sequence[int]
                ) -> dict[str, int]:
  """Multiply-adds of each path of a TT-matrix layer, and the entries of
  the factorized path's intermediates."""
  factorized = intermediates = 0
  for k in range(len(in_shape)):
    done = math.prod(out_shape[:k]) * math.prod(in_shape[k + 1:])
    factorized += (batch * done * ranks[k] * in_shape[k] * out_shape[k]
                   * ranks[k + 1])
    intermediates += batch * done * out_shape[k] * ranks[k + 1]
  out_features = math.prod(out_shape)
  dense = batch * math.prod(in_shape) * out_features
  merged = [i * o for i, o in zip(in_shape, out_shape)]
  return {"factorized": factorized,
          "reconstructed": dense + tt_rebuild_flops(merged, ranks),
          "dense": dense,
          "intermediates": intermediates - batch * out_features}


def tt_dense_flops(input_shape: Sequence[int], in_shape: Sequence[int],
                   out_shape: Sequence[int], ranks: Sequence[int]
                   ) -> dict[str, int]:
  """Multiply-adds of each path for an input (*batch, prod(in_shape)) or
  (*batch, *in_shape) through a TT-matrix with TT ranks `ranks` (boundary
  1s included), as `cp_conv_flops` counts them."""
  batch, _ = batch_shape(input_shape, in_shape)
  return _dense_plan(math.prod(batch), in_shape, out_shape, ranks)


def tt_dense(x: jax.Array, cores: Sequence[jax.Array], *,
             implementation: str = "auto", precision=None) -> jax.Array:
  """(N, prod(in_shape)) -> (N, prod(out_shape)), no bias, through the
  TT-matrix with cores (r_k, in_k, out_k, r_{k+1}).

  "factorized": contract the tensorized input with one core at a time, each
  turning input mode k into output mode k; no dense weight is formed.
  "reconstructed": rebuild the weight, one matmul. "auto": the cheaper
  (`choose`).
  """
  in_shape = tuple(core.shape[1] for core in cores)
  out_shape = tuple(core.shape[2] for core in cores)
  ranks = [core.shape[0] for core in cores] + [1]
  batch = x.shape[0]
  flops = _dense_plan(batch, in_shape, out_shape, ranks)
  if choose(implementation, flops) == "reconstructed":
    weight = jnp.reshape(tensor.tt_matrix_to_tensor(cores),
                         (math.prod(in_shape), math.prod(out_shape)))
    return jnp.dot(x, weight, precision=precision)
  # h: (N, outputs so far, r_k, in_k, inputs still to go)
  h = jnp.reshape(x, (batch, 1, 1, in_shape[0], -1))
  for k, core in enumerate(cores):
    h = jnp.einsum("nprib,rios->nposb", h, core, precision=precision)
    if k + 1 < len(cores):
      h = jnp.reshape(h, (batch, -1, ranks[k + 1], in_shape[k + 1],
                          math.prod(in_shape[k + 2:])))
  return jnp.reshape(h, (batch, math.prod(out_shape)))
