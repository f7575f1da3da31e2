"""Argument checks and plumbing the factorized conv layers share. Private to
`cpac_jax.layers`; the computation is in `cpac_jax.functional`."""

import types
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from cpac_jax.functional import ConvGeometry, auto_conv_general_dilated

Padding = str | int | Sequence[int] | Sequence[tuple[int, int]]


def as_tuple(value: int | Sequence[int] | None, num_spatial: int, name: str,
             layer: str) -> tuple[int, ...]:
  """Broadcast an int (or None, meaning 1) to one positive int per axis."""
  value = 1 if value is None else value
  values = (value,) * num_spatial if isinstance(value, int) else tuple(value)
  if len(values) != num_spatial or not all(
      isinstance(v, int) and v >= 1 for v in values):
    raise ValueError(
        f"{layer}: {name} {value!r} is invalid for a {num_spatial}-D kernel; "
        f"give a positive int or {num_spatial} positive ints")
  return values


def check_padding(padding: Padding, num_spatial: int, layer: str):
  """'SAME', 'VALID', an int, one int per axis, or one (low, high) per axis,
  as `nnx.Conv` takes them; returned as a string or a tuple of pairs."""
  if isinstance(padding, str):
    if padding.upper() in ("SAME", "VALID"):
      return padding.upper()
  elif isinstance(padding, int):
    return ((padding, padding),) * num_spatial
  elif isinstance(padding, Sequence) and len(padding) == num_spatial:
    pairs = tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)
    if all(len(p) == 2 and all(isinstance(v, int) for v in p) for p in pairs):
      return pairs
  raise ValueError(
      f"{layer}: padding {padding!r} is not supported; give 'SAME', 'VALID', "
      f"an int, or {num_spatial} ints or (low, high) pairs")


def flatten_batch(x: jax.Array, num_spatial: int, in_features: int,
                  layer: str):
  """(*batch, *spatial, Cin) -> (N, *spatial, Cin) and the batch shape."""
  if x.ndim < num_spatial + 1 or x.shape[-1] != in_features:
    raise ValueError(
        f"{layer}: input of shape {x.shape} doesn't fit a {num_spatial}-D "
        f"conv with {in_features} input channels; expected "
        f"(N, {', '.join(['size'] * num_spatial)}, {in_features})")
  batch_shape = x.shape[:x.ndim - num_spatial - 1]
  return jnp.reshape(x, (-1,) + x.shape[len(batch_shape):]), batch_shape


def configure(layer, name: str, in_features: int, out_features: int,
              kernel_size: int | Sequence[int], strides, padding,
              kernel_dilation) -> None:
  """Check and set the geometry attributes the factorized convs share."""
  for what, value in (("in_features", in_features),
                      ("out_features", out_features)):
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"{name}: {what} must be a positive int, got {value!r}")
  if isinstance(kernel_size, int):
    kernel_size = (kernel_size,)
  num_spatial = len(tuple(kernel_size))
  if num_spatial < 1:
    raise ValueError(f"{name}: kernel_size must name at least one axis")
  layer.in_features = in_features
  layer.out_features = out_features
  layer.kernel_size = as_tuple(kernel_size, num_spatial, "kernel_size", name)
  layer.strides = as_tuple(strides, num_spatial, "strides", name)
  layer.kernel_dilation = as_tuple(kernel_dilation, num_spatial,
                                   "kernel_dilation", name)
  layer.padding = check_padding(padding, num_spatial, name)


def geometry(layer) -> ConvGeometry:
  return ConvGeometry(layer.kernel_size, layer.strides, layer.padding,
                      layer.kernel_dilation)


def conv_geometry(conv: nnx.Conv) -> ConvGeometry:
  """Where an `nnx.Conv`'s kernel goes, its sizes, strides, padding and
  dilation each given per spatial axis (as the factorized convs hold
  them)."""
  probe = types.SimpleNamespace()
  configure(probe, "conv_geometry", conv.in_features, conv.out_features,
            conv.kernel_size, conv.strides, conv.padding,
            conv.kernel_dilation)
  return geometry(probe)


def from_conv_kwargs(conv, caller: str) -> dict:
  """The constructor arguments that carry an `nnx.Conv`'s setup over; its
  default, XLA's conv, and `auto_conv_general_dilated` become ours, the
  per-conv choice (None)."""
  if not isinstance(conv, nnx.Conv):  # ConvTranspose, Linear: not convs
    raise TypeError(f"{caller} takes an nnx.Conv, got {type(conv).__name__}"
                    + ("; TTDense.from_linear and TuckerDense.from_linear "
                       "take an nnx.Linear" if isinstance(conv, nnx.Linear)
                       else ""))
  if conv.feature_group_count != 1 or conv.input_dilation not in (1, None):
    raise ValueError(
        f"{caller}: grouped or input-dilated convs are not supported, got "
        f"feature_group_count={conv.feature_group_count}, "
        f"input_dilation={conv.input_dilation}")
  return dict(in_features=conv.in_features, out_features=conv.out_features,
              kernel_size=conv.kernel_size, strides=conv.strides,
              padding=conv.padding, kernel_dilation=conv.kernel_dilation,
              use_bias=conv.bias is not None, dtype=conv.dtype,
              param_dtype=conv.param_dtype, precision=conv.precision,
              conv_general_dilated=(
                  None if conv.conv_general_dilated in (
                      lax.conv_general_dilated, auto_conv_general_dilated)
                  else conv.conv_general_dilated))


def effective_kernel(conv) -> jax.Array:
  """The kernel an `nnx.Conv` computes with: a masked conv's kernel times
  its mask. A factorized layer built from it holds no mask: its factors
  approximate this kernel, and so what the conv computed."""
  kernel = conv.kernel[...]
  mask = getattr(conv, "mask", None)
  return kernel if mask is None else kernel * mask


def assign(layer, factors: Sequence[jax.Array], bias: jax.Array | None):
  """Set a factorized conv's factors (kernel-mode order) and bias."""
  for param, factor in zip(layer.spatial_factors, factors[:-2], strict=True):
    param[...] = factor
  layer.in_factor[...], layer.out_factor[...] = factors[-2:]
  if bias is not None:
    layer.bias[...] = bias[...]
