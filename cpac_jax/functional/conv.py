"""Channels-last convolution pieces the factorized convs share: padding,
output sizes, the dense conv and its lowerings (`patches_conv`,
`winograd_conv`), a depthwise 1-D conv, and multiply-add counts."""

import functools
import itertools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["PATCHES_BELOW_CHANNELS", "WINOGRAD_COST",
           "WINOGRAD_FROM_CHANNELS", "WINOGRAD_FROM_TILES", "ConvGeometry",
           "auto_conv_general_dilated", "channels_last", "conv",
           "conv_lowering", "dense_conv_flops", "depthwise_along",
           "explicit_padding", "lowering_saving", "output_size",
           "output_shape", "patches_conv", "pointwise", "winograd_conv"]

Padding = str | Sequence[tuple[int, int]]

# Below this many input channels XLA's CPU convolution, forward and
# backward, is slower than `patches_conv`'s one matmul: for 3x3 convs
# c -> c, batch 32, on 32x32 and 16x16 (2-core AVX-512 CPU, compiled
# without the YNNPACK fusions as cpac_jax's training compiles),
# patches_conv took 0.30x-0.82x XLA's time at 2-6 channels, 0.59x-0.98x
# at 8, 0.75x-1.35x at 12 and slower above
# (experiments/benchmarks/lowering.md, `cpac_jax.benchmarks.lowering`). These
# small rows vary between runs on this machine: in the file's previous
# commit 6 channels took 1.24x-1.31x and 8 1.39x-1.47x, and on the
# AVX2-only CPU of an earlier run (its git history) 8 was a tie
# (0.81x-2.09x); hence 8, kept. The small core convs of low-rank Tucker
# and TT layers sit here.
PATCHES_BELOW_CHANNELS = 8

# `winograd_conv` against XLA's conv on the CPU, forward and backward, 3x3
# c -> c, batch 32 (2-core AVX-512 CPU, freed blocks kept,
# experiments/benchmarks/lowering.md): from 64 channels on maps of 8x8 to
# 32x32 it took 0.44x-0.93x XLA's time in all 9 rows (64 channels:
# 0.53x-0.80x); on 4x4 maps, one tile an image, 32 tiles in all, it is
# slower: each of its 36 matmuls has so few rows that reading the
# transformed kernel bounds it. Hence from 64 input channels and 128
# output tiles up. At 24 and 32 channels it took 0.58x-1.09x (24 on 32x32
# the slower; 0.66x-0.98x in the file's previous commit); a bound there
# would also change what the compression experiment's committed CP runs
# compute (their reconstructed 32-channel convs on 14x14).
WINOGRAD_FROM_CHANNELS = 64
WINOGRAD_FROM_TILES = 128

# What a dense conv's multiply-add costs where `winograd_conv` runs it, as
# a fraction of XLA's conv's: the median of the 9 rows above (0.57x).
# `choose` prices the dense convs of a factorized layer's paths with it.
WINOGRAD_COST = 0.57


class ConvGeometry(NamedTuple):
  """Where a conv kernel goes: one entry per spatial axis; `padding` is
  'SAME', 'VALID' or one (low, high) pair per axis."""

  kernel_size: tuple[int, ...]
  strides: tuple[int, ...]
  padding: Padding
  dilation: tuple[int, ...]


def explicit_padding(padding: Padding, spatial_shape: Sequence[int],
                     kernel_size: Sequence[int], strides: Sequence[int],
                     dilation: Sequence[int]) -> list[tuple[int, int]]:
  """(low, high) per spatial axis. 'SAME' and 'VALID' depend on each axis
  alone, so a conv can be split into one 1-D conv per axis with these."""
  if not isinstance(padding, str):
    return list(padding)
  dilated = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation)]
  return lax.padtype_to_pads(spatial_shape, dilated, strides, padding)


def output_size(size: int, kernel: int, stride: int, dilation: int,
                pad: tuple[int, int]) -> int:
  return (size + pad[0] + pad[1] - (kernel - 1) * dilation - 1) // stride + 1


def output_shape(input_shape: Sequence[int], geometry: ConvGeometry):
  """Batch size, input spatial sizes, (low, high) pads and output spatial
  sizes of a conv of `geometry` on an input (*batch, *spatial, Cin)."""
  num_spatial = len(geometry.kernel_size)
  batch = math.prod(input_shape[:-1 - num_spatial])
  spatial = list(input_shape[-1 - num_spatial:-1])
  pads = explicit_padding(geometry.padding, spatial, geometry.kernel_size,
                          geometry.strides, geometry.dilation)
  out = [output_size(*args) for args in zip(
      spatial, geometry.kernel_size, geometry.strides, geometry.dilation,
      pads)]
  return batch, spatial, pads, out


def channels_last(ndim: int) -> lax.ConvDimensionNumbers:
  """Dimension numbers of x (N, *spatial, C) and kernel (*k, Cin, Cout)."""
  spatial = tuple(range(1, ndim - 1))
  return lax.ConvDimensionNumbers(
      lhs_spec=(0, ndim - 1) + spatial,
      rhs_spec=(ndim - 1, ndim - 2) + tuple(range(ndim - 2)),
      out_spec=(0, ndim - 1) + spatial)


def conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
         padding: Sequence[tuple[int, int]], dilation: Sequence[int], *,
         precision=None, conv_general_dilated=None) -> jax.Array:
  """Channels-last conv: x (N, *spatial, Cin), kernel (*k, Cin, Cout), by
  `conv_general_dilated` (`lax.conv_general_dilated`, `patches_conv` or
  `winograd_conv`; None: `conv_lowering` of its shapes)."""
  if conv_general_dilated is None:
    conv_general_dilated = conv_lowering(
        kernel.shape[-2], x.shape[1:-1], kernel.shape[:-2], strides=strides,
        dilation=dilation, batch=x.shape[0])
  return conv_general_dilated(
      x, kernel, tuple(strides), list(padding), rhs_dilation=tuple(dilation),
      dimension_numbers=channels_last(x.ndim), precision=precision)


def patches_conv(lhs: jax.Array, rhs: jax.Array,
                 window_strides: Sequence[int], padding,
                 lhs_dilation: Sequence[int] | None = None,
                 rhs_dilation: Sequence[int] | None = None,
                 dimension_numbers=None, feature_group_count: int = 1,
                 precision=None, preferred_element_type=None,
                 out_sharding=None) -> jax.Array:
  """`lax.conv_general_dilated` for channels-last input and kernel, computed
  as one contraction of the input's patches (im2col) with the kernel.

  Each kernel tap is a strided slice of the padded input; the slices are
  stacked and contracted with the kernel (taps, Cin, Cout) by one matmul.
  For convs with few input channels, such as the CPAC nets' 1->8 and 8->8,
  XLA's CPU convolution, forward and backward, is far slower than this
  matmul; with many input channels the patches (taps times the input) cost
  more memory than they save. A drop-in `conv_general_dilated` for
  `nnx.Conv`, `CPConv` and `TuckerConv`; no input dilation or groups.
  """
  num_spatial = lhs.ndim - 2
  if dimension_numbers is not None and not _is_channels_last(
      lhs, rhs, dimension_numbers):
    raise ValueError(
        f"patches_conv: dimension_numbers {dimension_numbers} are not "
        "channels-last; give input (N, *spatial, C) and kernel (*k, Cin, Cout)")
  if not _undilated_ungrouped(lhs_dilation, feature_group_count):
    raise ValueError(
        f"patches_conv: lhs_dilation {lhs_dilation} and feature_group_count "
        f"{feature_group_count} are not supported; use "
        "lax.conv_general_dilated")
  kernel_size = rhs.shape[:num_spatial]
  dilation = tuple(rhs_dilation or (1,) * num_spatial)
  strides = tuple(window_strides)
  if isinstance(padding, str):
    padding = explicit_padding(padding, lhs.shape[1:-1], kernel_size, strides,
                               dilation)
  x = lax.pad(lhs, jnp.zeros((), lhs.dtype),
              [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in padding] + [(0, 0, 0)])
  out = [output_size(n, k, s, d, (0, 0)) for n, k, s, d in zip(
      x.shape[1:-1], kernel_size, strides, dilation)]
  taps = []
  for offsets in itertools.product(*(range(k) for k in kernel_size)):
    start = [0] + [t * d for t, d in zip(offsets, dilation)] + [0]
    limit = ([x.shape[0]] + [b + (n - 1) * s + 1 for b, n, s in zip(
        start[1:], out, strides)] + [x.shape[-1]])
    taps.append(lax.slice(x, start, limit, (1,) + strides + (1,)))
  patches = jnp.stack(taps, axis=-2)  # (N, *out, taps, Cin)
  patches = jnp.reshape(patches, patches.shape[:-2] + (-1,))
  kernel = jnp.reshape(rhs, (-1, rhs.shape[-1]))
  return pointwise(patches, kernel, precision=precision,
                   preferred_element_type=preferred_element_type,
                   out_sharding=out_sharding)


def _is_channels_last(lhs: jax.Array, rhs: jax.Array,
                      dimension_numbers) -> bool:
  """Whether `dimension_numbers` lay out lhs and rhs as `channels_last`."""
  return lax.conv_dimension_numbers(
      lhs.shape, rhs.shape, dimension_numbers) == channels_last(lhs.ndim)


def _undilated_ungrouped(lhs_dilation, feature_group_count: int) -> bool:
  """No input dilation and no groups, as `patches_conv` and
  `winograd_conv` need."""
  return all(d == 1 for d in lhs_dilation or ()) and feature_group_count == 1


# Winograd's minimal filtering F(4x4, 3x3) (Lavin and Gray, "Fast
# Algorithms for Convolutional Neural Networks", 2016): the 4x4 output tile
# of a 3x3 kernel g on a 6x6 input tile d is AT [(G g G^T) * (BT d BT^T)] AT^T,
# elementwise product in the middle. Over the channels this is 36 matmuls
# (one per tile entry) of the tiles' transformed inputs with the transformed
# kernel: 36 multiply-adds per 16 outputs per channel pair where the conv
# takes 144.
_WINOGRAD_BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0],
                         [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
                         [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]])
_WINOGRAD_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6],
                        [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
                        [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])
_WINOGRAD_AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0],
                         [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]])
_TILE, _SPAN = 4, 6  # output and input tile sides


def winograd_conv(lhs: jax.Array, rhs: jax.Array,
                  window_strides: Sequence[int], padding,
                  lhs_dilation: Sequence[int] | None = None,
                  rhs_dilation: Sequence[int] | None = None,
                  dimension_numbers=None, feature_group_count: int = 1,
                  precision=None, preferred_element_type=None,
                  out_sharding=None) -> jax.Array:
  """`lax.conv_general_dilated` for a 2-D channels-last 3x3 conv with unit
  strides, by Winograd's F(4x4, 3x3): the padded input cut into 6x6 tiles
  at a stride of 4, each tile and the kernel transformed, 36 batched
  matmuls, each product transformed back to a 4x4 output tile. A custom
  VJP runs the backward pass in the same transformed space (its two
  gradients are two more batched matmuls), keeping the transformed input,
  2.25x the input's size, from the forward pass.

  A quarter of a conv's multiply-adds, plus transforms that read and write
  2.25x the input and output: on the CPU it beats XLA's conv where the
  matmuls dominate, many channels and many tiles (`conv_lowering`). Its
  rounding differs from a direct conv's: the transforms' coefficients run
  to 8 and 1/24, so its largest float32 error is about 20x a direct
  conv's: at 128 channels on random inputs, 1e-5 of the largest output
  against 6e-7 for XLA's conv, measured against a float64 conv
  (tests/test_layers.py bounds the two by 5e-5 and 5e-6). Inputs below
  float32 are transformed and multiplied in float32. A drop-in
  `conv_general_dilated` for `nnx.Conv`; anything else raises ValueError.

  Example:
    >>> x, kernel = jnp.ones((1, 6, 6, 2)), jnp.ones((3, 3, 2, 4))
    >>> winograd_conv(x, kernel, (1, 1), "SAME",
    ...               dimension_numbers=("NHWC", "HWIO", "NHWC")).shape
    (1, 6, 6, 4)
  """
  if dimension_numbers is None or not _is_channels_last(
      lhs, rhs, dimension_numbers):
    raise ValueError(
        f"winograd_conv: dimension_numbers {dimension_numbers} are not "
        "channels-last; give input (N, H, W, C) and kernel (3, 3, Cin, Cout)")
  problems = []
  if rhs.shape[:-2] != (3, 3):
    problems.append(f"kernel size {rhs.shape[:-2]} (needs (3, 3))")
  if tuple(window_strides) != (1, 1):
    problems.append(f"strides {tuple(window_strides)} (needs (1, 1))")
  if any(d != 1 for d in rhs_dilation or ()):
    problems.append(f"rhs_dilation {rhs_dilation} (needs none)")
  if not _undilated_ungrouped(lhs_dilation, feature_group_count):
    problems.append(f"lhs_dilation {lhs_dilation} and feature_group_count "
                    f"{feature_group_count} (needs neither)")
  if out_sharding is not None:
    problems.append(f"out_sharding {out_sharding} (needs None)")
  if problems:
    raise ValueError("winograd_conv computes 2-D 3x3 convs with unit strides "
                     f"only; got {', '.join(problems)}; use "
                     "lax.conv_general_dilated")
  if isinstance(padding, str):
    padding = explicit_padding(padding, lhs.shape[1:-1], (3, 3), (1, 1),
                               (1, 1))
  padding = tuple(tuple(int(p) for p in pair) for pair in padding)
  # Below float32 (bfloat16, float16) the transforms' coefficients would
  # cost too much precision: computed in float32, returned in the input's
  # dtype (or preferred_element_type).
  out_dtype = preferred_element_type or jnp.result_type(lhs, rhs)
  compute = jnp.promote_types(out_dtype, jnp.float32)
  y = _winograd(lhs.astype(compute), rhs.astype(compute), padding, precision)
  return y.astype(out_dtype)


def _combine(matrix: np.ndarray, parts: Sequence[jax.Array]
             ) -> list[jax.Array]:
  """matrix @ parts, one output per row: each a sum of the parts scaled by
  the row's nonzero constants."""
  out = []
  for row in matrix:
    terms = [part if c == 1 else -part if c == -1 else part * float(c)
             for c, part in zip(row, parts) if c != 0]
    out.append(functools.reduce(jnp.add, terms))
  return out


def _tiling(size: int, pad: tuple[int, int]):
  """Output size, tiles and the input padding that fills them, one axis."""
  out = size + pad[0] + pad[1] - 2
  tiles = -(-out // _TILE)
  return out, tiles, (pad[0], tiles * _TILE + 2 - size - pad[0])


def _tile_along(x: jax.Array, axis: int, tiles: int) -> list[jax.Array]:
  """The 6 strided slices of x along `axis`: slice t holds entry t of every
  tile (tile i starts at 4i)."""
  return [lax.slice_in_dim(x, t, t + (tiles - 1) * _TILE + 1, _TILE, axis)
          for t in range(_SPAN)]


def _untile_along(parts: Sequence[jax.Array], axis: int) -> jax.Array:
  """The transpose of `_tile_along`: entry t of tile i added at 4i + t,
  entries 4 and 5 overlapping the next tile's 0 and 1."""
  def pad(part, low, high):
    widths = [(0, 0)] * part.ndim
    widths[axis] = (low, high)
    return jnp.pad(part, widths)

  phases = [pad(parts[0], 0, 1) + pad(parts[4], 1, 0),
            pad(parts[1], 0, 1) + pad(parts[5], 1, 0),
            pad(parts[2], 0, 1), pad(parts[3], 0, 1)]
  out = jnp.stack(phases, axis=axis + 1)
  shape = list(out.shape)
  shape[axis:axis + 2] = [shape[axis] * _TILE]
  return jnp.reshape(out, shape)


def _winograd_input(x, tiles, pads):
  """x (N, H, W, C) -> (36, N * tiles, C), BT d BT^T for every tile d."""
  x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  # Rows first, materialized once: without the barrier XLA recomputes the
  # row transform inside each of the 36 column transforms.
  rows = lax.optimization_barrier(jnp.stack(
      _combine(_WINOGRAD_BT, _tile_along(x, 1, tiles[0]))))
  v = [entry for row in rows
       for entry in _combine(_WINOGRAD_BT, _tile_along(row, 2, tiles[1]))]
  return jnp.reshape(jnp.stack(v), (_SPAN * _SPAN, -1, x.shape[-1]))


def _winograd_input_transpose(dv, batch, tiles, channels):
  """The transpose of `_winograd_input` before its padding: (36, P, C) ->
  (N, 4 tiles + 4, 4 tiles + 4, C) on the padded grid."""
  dv = jnp.reshape(dv, (_SPAN, _SPAN, batch, *tiles, channels))
  rows = [_untile_along(_combine(_WINOGRAD_BT.T, list(dv[i])), 2)
          for i in range(_SPAN)]
  return _untile_along(_combine(_WINOGRAD_BT.T, rows), 1)


def _winograd_output(m, batch, tiles):
  """(36, P, O) -> (N, 4 tiles, 4 tiles, O), AT m AT^T for every tile."""
  m = jnp.reshape(m, (_SPAN, _SPAN, batch, *tiles, m.shape[-1]))
  rows = _combine(_WINOGRAD_AT, list(m))  # 4 of (6, N, th, tw, O)
  y = jnp.stack([jnp.stack(_combine(_WINOGRAD_AT, list(row)), axis=3)
                 for row in rows], axis=2)  # (N, th, 4, tw, 4, O)
  return jnp.reshape(y, (batch, tiles[0] * _TILE, tiles[1] * _TILE, -1))


def _winograd_output_transpose(g, batch, tiles):
  """The transpose of `_winograd_output`: (N, 4 th, 4 tw, O) -> (36, P, O)."""
  g = jnp.reshape(g, (batch, tiles[0], _TILE, tiles[1], _TILE, g.shape[-1]))
  rows = _combine(_WINOGRAD_AT.T, [g[:, :, p] for p in range(_TILE)])
  dm = [entry for row in rows for entry in _combine(
      _WINOGRAD_AT.T, [row[:, :, :, q] for q in range(_TILE)])]
  return jnp.reshape(jnp.stack(dm), (_SPAN * _SPAN, -1, g.shape[-1]))


def _winograd_kernel(kernel):
  """(3, 3, Cin, Cout) -> (36, Cin, Cout), G g G^T."""
  g = _WINOGRAD_G.astype(kernel.dtype)
  u = jnp.einsum("ai,ijco,bj->abco", g, kernel, g)
  return jnp.reshape(u, (_SPAN * _SPAN,) + kernel.shape[2:])


def _winograd_kernel_transpose(du):
  """The transpose of `_winograd_kernel`: (36, Cin, Cout) -> (3, 3, Cin,
  Cout)."""
  g = _WINOGRAD_G.astype(du.dtype)
  du = jnp.reshape(du, (_SPAN, _SPAN) + du.shape[1:])
  return jnp.einsum("ai,abco,bj->ijco", g, du, g)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _winograd(x, kernel, padding, precision):
  return _winograd_forward(x, kernel, padding, precision)[0]


def _winograd_forward(x, kernel, padding, precision):
  batch, height, width, _ = x.shape
  (out_h, th, pad_h), (out_w, tw, pad_w) = (
      _tiling(height, padding[0]), _tiling(width, padding[1]))
  v = _winograd_input(x, (th, tw), (pad_h, pad_w))
  u = _winograd_kernel(kernel)
  m = jnp.matmul(v, u, precision=precision)
  y = _winograd_output(m, batch, (th, tw))[:, :out_h, :out_w]
  return y, (v, u, x.shape)


def _winograd_backward(padding, precision, residuals, g):
  v, u, (batch, height, width, channels) = residuals
  (out_h, th, pad_h), (out_w, tw, pad_w) = (
      _tiling(height, padding[0]), _tiling(width, padding[1]))
  g = jnp.pad(g, ((0, 0), (0, th * _TILE - out_h), (0, tw * _TILE - out_w),
                  (0, 0)))
  dm = _winograd_output_transpose(g, batch, (th, tw))
  du = jnp.matmul(jnp.swapaxes(v, 1, 2), dm, precision=precision)
  dv = jnp.matmul(dm, jnp.swapaxes(u, 1, 2), precision=precision)
  dx = _winograd_input_transpose(dv, batch, (th, tw), channels)
  dx = dx[:, pad_h[0]:pad_h[0] + height, pad_w[0]:pad_w[0] + width]
  dk = _winograd_kernel_transpose(du)
  return dx.astype(v.dtype), dk.astype(u.dtype)


_winograd.defvjp(_winograd_forward, _winograd_backward)


def conv_lowering(in_channels: int, spatial: Sequence[int] = (),
                  kernel_size: Sequence[int] = (), *,
                  strides: Sequence[int] = (), dilation: Sequence[int] = (),
                  batch: int | None = None):
  """The convolution `conv` runs when given none. On the CPU:
  `patches_conv` for fewer than `PATCHES_BELOW_CHANNELS` input channels, or
  for an input smaller than the kernel along some axis (`spatial`, its
  sizes, against `kernel_size`); `winograd_conv` for a 2-D 3x3 conv with
  unit `strides` and `dilation` (empty: 1) from `WINOGRAD_FROM_CHANNELS`
  input channels and `WINOGRAD_FROM_TILES` 4x4 output tiles over the
  `batch` (needed; the tiles counted on the input's sizes); else
  `lax.conv_general_dilated`.

  An input smaller than its kernel is a padded conv of a 2x2 or 1x1 map,
  such as VGG-16's last stage on 32x32 images, where XLA's CPU conv is
  pathologically slow: forward+backward, 3x3, batch 32, it took 4.4x-37x
  `patches_conv`'s time at 64-512 channels on 2x2 and 1.5x-3.8x at 256-512
  on 1x1; on 3x3 and 4x4 maps, from 64 channels up, the two are within 1.13x
  (experiments/benchmarks/lowering.md).

  Example:
    >>> conv_lowering(64, (16, 16), (3, 3)) is lax.conv_general_dilated
    True
  """
  if jax.default_backend() != "cpu":
    return lax.conv_general_dilated
  if (in_channels < PATCHES_BELOW_CHANNELS
      or any(n < k for n, k in zip(spatial, kernel_size))):
    return patches_conv
  unit = all(s == 1 for s in strides) and all(d == 1 for d in dilation)
  if (tuple(kernel_size) == (3, 3) and unit and batch is not None
      and in_channels >= WINOGRAD_FROM_CHANNELS
      and batch * math.prod(-(-n // _TILE) for n in spatial)
      >= WINOGRAD_FROM_TILES):
    return winograd_conv
  return lax.conv_general_dilated


def auto_conv_general_dilated(lhs: jax.Array, rhs: jax.Array,
                              window_strides: Sequence[int], padding,
                              lhs_dilation: Sequence[int] | None = None,
                              rhs_dilation: Sequence[int] | None = None,
                              dimension_numbers=None,
                              feature_group_count: int = 1, precision=None,
                              preferred_element_type=None,
                              out_sharding=None) -> jax.Array:
  """`lax.conv_general_dilated` through the lowering `conv_lowering` picks
  for these shapes: a drop-in `conv_general_dilated` for `nnx.Conv` (the
  VGG-16 nets' dense convs use it). A conv `patches_conv` doesn't compute
  (not channels-last, input dilation, groups) stays XLA's, and so does one
  with an `out_sharding` where the rule picks `winograd_conv`.

  Example:
    >>> from flax import nnx
    >>> layer = nnx.Conv(512, 512, (3, 3), rngs=nnx.Rngs(0),
    ...                  conv_general_dilated=auto_conv_general_dilated)
    >>> layer(jnp.ones((1, 2, 2, 512))).shape
    (1, 2, 2, 512)
  """
  lowering = lax.conv_general_dilated
  if (dimension_numbers is not None
      and _is_channels_last(lhs, rhs, dimension_numbers)
      and _undilated_ungrouped(lhs_dilation, feature_group_count)):
    lowering = conv_lowering(
        lhs.shape[-1], lhs.shape[1:-1], rhs.shape[:-2],
        strides=window_strides, dilation=rhs_dilation or (),
        batch=lhs.shape[0])
    if lowering is winograd_conv and out_sharding is not None:
      lowering = lax.conv_general_dilated
  return lowering(lhs, rhs, window_strides, padding,
                  lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                  dimension_numbers=dimension_numbers,
                  feature_group_count=feature_group_count,
                  precision=precision,
                  preferred_element_type=preferred_element_type,
                  out_sharding=out_sharding)


def pointwise(x: jax.Array, matrix: jax.Array, *, precision=None,
              preferred_element_type=None, out_sharding=None) -> jax.Array:
  """x (..., C) times matrix (C, R): a 1x1 conv, as one 2-D matmul over
  the flattened leading axes. The same product as
  `jnp.einsum("...c,cr->...r")`, whose gradients XLA's CPU backend runs
  1.2x-1.6x slower (it contracts over the several leading axes).

  Its VJP (`_matmul_backward`) keeps XLA's CPU dots off the layouts they
  run slowest: a product whose right operand is a transpose (`matrix` given
  as `factor.T`, and x's gradient, g times matrix transposed) is folded
  into one dot that reads that operand column by column, and a weight
  gradient x^T g (C, R) with fewer columns than rows is computed as
  (g^T x)^T, R by C, then transposed. With three-column
  factors (Tucker's core at 66x) the folded dot took 10x the time of the
  same dot on a row-major operand and the weight gradient 7.6x the time of
  (g^T x)^T (a probe on 2 cores, not committed; the layer figures are in
  experiments/benchmarks/peers.md). With `out_sharding`, JAX's own VJP.
  """
  x2d = jnp.reshape(x, (-1, x.shape[-1]))
  if out_sharding is not None:
    out = jnp.matmul(x2d, matrix, precision=precision,
                     preferred_element_type=preferred_element_type,
                     out_sharding=out_sharding)
  else:
    out = _matmul(x2d, matrix, precision, preferred_element_type)
  return jnp.reshape(out, x.shape[:-1] + (matrix.shape[-1],))


def _row_major(a: jax.Array) -> jax.Array:
  """a, materialized: XLA may not fold a transpose through the barrier
  into the dot that reads it."""
  return lax.optimization_barrier(a)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _matmul(x, matrix, precision, preferred_element_type):
  return jnp.matmul(x, _row_major(matrix), precision=precision,
                    preferred_element_type=preferred_element_type)


def _matmul_forward(x, matrix, precision, preferred_element_type):
  return _matmul(x, matrix, precision, preferred_element_type), (x, matrix)


def _matmul_backward(precision, preferred_element_type, residuals, g):
  x, matrix = residuals
  x_grad = jnp.matmul(g, _row_major(matrix.T), precision=precision)
  if matrix.shape[1] < matrix.shape[0]:
    matrix_grad = _row_major(jnp.matmul(g.T, x, precision=precision)).T
  else:
    matrix_grad = jnp.matmul(x.T, g, precision=precision)
  return x_grad.astype(x.dtype), matrix_grad.astype(matrix.dtype)


_matmul.defvjp(_matmul_forward, _matmul_backward)


def depthwise_along(x: jax.Array, kernel: jax.Array, axis: int, stride: int,
                    dilation: int, pad: tuple[int, int]) -> jax.Array:
  """A depthwise 1-D convolution along `axis` of x (..., C) with kernel
  (k, C): out[i] = sum_t x_padded[i * stride + t * dilation] * kernel[t].

  Written as k strided slices, scaled and summed, which XLA fuses into one
  pass over x: on the CPU, lax.conv with feature_group_count=C runs this
  orders of magnitude slower per multiply-add than a dense conv. Its
  kernel gradient is a custom VJP (`_depthwise_kernel_grad`).
  """
  return _depthwise(x, kernel, axis, stride, dilation, tuple(pad))


def _taps(x, taps, axis, stride, dilation, pad):
  """The k strided slices of x, padded along `axis`, that tap t scales."""
  widths = [(0, 0)] * x.ndim
  widths[axis] = pad
  x = jnp.pad(x, widths)
  out = (x.shape[axis] - (taps - 1) * dilation - 1) // stride + 1
  return [lax.slice_in_dim(x, t * dilation, t * dilation
                           + (out - 1) * stride + 1, stride, axis)
          for t in range(taps)]


def _depthwise_forward(x, kernel, axis, stride, dilation, pad):
  parts = _taps(x, kernel.shape[0], axis, stride, dilation, pad)
  return sum(part * kernel[t] for t, part in enumerate(parts))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _depthwise(x, kernel, axis, stride, dilation, pad):
  return _depthwise_forward(x, kernel, axis, stride, dilation, pad)


def _depthwise_fwd(x, kernel, axis, stride, dilation, pad):
  return _depthwise(x, kernel, axis, stride, dilation, pad), (x, kernel)


def _depthwise_kernel_grad(axis, stride, dilation, pad, residuals, g):
  """x's gradient as JAX derives it; the kernel's, sum over every axis but
  C of tap t's slice times g, as k matmuls of a row of ones by the
  (positions, C) products: with XLA's CPU reduction over the leading axes
  a 64-channel CP conv's forward+backward took about 1.8x the time (a
  probe on 2 cores, not committed; with the YNNPACK fusions off too, the
  10x CP convs of experiments/benchmarks/peers.md went from 1.32x-1.37x
  tltorch's time to 0.86x-0.87x)."""
  x, kernel = residuals
  _, x_vjp = jax.vjp(lambda x: _depthwise_forward(
      x, kernel, axis, stride, dilation, pad), x)
  ones = jnp.ones((1, g.size // g.shape[-1]), g.dtype)
  kernel_grad = jnp.stack([
      jnp.matmul(ones, jnp.reshape(part * g, (-1, g.shape[-1])))[0]
      for part in _taps(x, kernel.shape[0], axis, stride, dilation, pad)])
  return x_vjp(g)[0], kernel_grad.astype(kernel.dtype)


_depthwise.defvjp(_depthwise_fwd, _depthwise_kernel_grad)


def dense_conv_flops(batch: int, out_spatial: Sequence[int],
                     kernel_size: Sequence[int], in_features: int,
                     out_features: int) -> int:
  """Multiply-adds of a dense conv."""
  return (batch * math.prod(out_spatial) * math.prod(kernel_size)
          * in_features * out_features)


def lowering_saving(macs: int, input_shape: Sequence[int],
                    geometry: ConvGeometry, conv_general_dilated=None) -> int:
  """Of a dense conv's `macs` multiply-adds on an input (N, *spatial, C),
  what `conv` saves at the lowering it runs (`conv_general_dilated`; None
  or `auto_conv_general_dilated`: `conv_lowering`'s pick), as `choose`
  prices it: (1 - WINOGRAD_COST) of them for `winograd_conv`, else none.

  Example:
    >>> geometry = ConvGeometry((3, 3), (1, 1), "SAME", (1, 1))
    >>> lowering_saving(1000, (32, 16, 16, 256), geometry, winograd_conv)
    430
    >>> lowering_saving(1000, (32, 16, 16, 256), geometry, patches_conv)
    0
  """
  if conv_general_dilated in (None, auto_conv_general_dilated):
    conv_general_dilated = conv_lowering(
        input_shape[-1], input_shape[1:-1], geometry.kernel_size,
        strides=geometry.strides, dilation=geometry.dilation,
        batch=input_shape[0])
  if conv_general_dilated is not winograd_conv:
    return 0
  return round(macs * (1 - WINOGRAD_COST))
