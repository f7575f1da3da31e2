"""Argument checks and the call the factorized dense layers share. Private to
`cpac_jax.layers`."""

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes

from cpac_jax import functional
from cpac_jax.layers import _empty


def shape(value, what: str, name: str) -> tuple[int, ...]:
  """A tensorized shape: a positive int or a tuple of them."""
  shape = (value,) if isinstance(value, int) else tuple(value)
  if not shape or not all(isinstance(s, int) and s >= 1 for s in shape):
    raise ValueError(
        f"{name}: {what} {value!r} must be a positive int or a tuple of them")
  return shape


def batch_shape(layer, input_shape):
  """The batch axes of an input to a tensorized dense layer, and whether it
  is tensorized; ValueError naming the layer if it fits neither form."""
  try:
    return functional.batch_shape(input_shape, layer.in_shape)
  except ValueError as error:
    raise ValueError(f"{type(layer).__name__}({layer.in_shape}->"
                     f"{layer.out_shape}): {error}") from None


def apply(layer, x: jax.Array, params: Sequence[jax.Array],
          compute: Callable[..., jax.Array], out_sharding=None) -> jax.Array:
  """A factorized dense layer's call: `x`, (N, prod(in_shape)) or (N,
  *in_shape) under any leading batch axes, as (rows, in_features);
  `params` and the bias promoted with it to the layer's dtype; y =
  compute(x, *params) + bias, in the form `x` came in ((N,
  prod(out_shape)) or (N, *out_shape)), with `out_sharding` if given."""
  batch, tensorized = batch_shape(layer, x.shape)
  if not math.prod(batch):
    return _empty.empty_batch(layer, x, len(batch))
  x = jnp.reshape(x, (math.prod(batch), layer.in_features))
  bias = layer.bias[...] if layer.bias is not None else None
  x, bias, *params = dtypes.promote_dtype((x, bias, *params),
                                          dtype=layer.dtype)
  y = compute(x, *params)
  if bias is not None:
    y = y + bias
  out_shape = layer.out_shape if tensorized else (layer.out_features,)
  y = jnp.reshape(y, batch + out_shape)
  return (y if out_sharding is None
          else jax.lax.with_sharding_constraint(y, out_sharding))


def linear_features(linear, where: str) -> tuple[tuple[int, ...],
                                                 tuple[int, ...]]:
  """The input and output feature shapes of an `nnx.Linear` or an
  `nnx.LinearGeneral`, which a factorized dense layer can take: TypeError
  for any other layer, ValueError (naming `where`) for a LinearGeneral
  that contracts other than the input's last axes or has batch axes."""
  if isinstance(linear, nnx.Linear):
    return (linear.in_features,), (linear.out_features,)
  if not isinstance(linear, nnx.LinearGeneral):
    raise TypeError(f"{where} takes an nnx.Linear or nnx.LinearGeneral, got "
                    f"{type(linear).__name__}"
                    + ("; CPConv, TuckerConv and TTConv.from_conv take an "
                       "nnx.Conv" if isinstance(linear, nnx.Conv) else ""))
  n = len(linear.in_features)
  if linear.batch_axis or tuple(sorted(linear.axis)) != tuple(range(-n, 0)):
    raise ValueError(
        f"{where}: the nnx.LinearGeneral contracts axis {linear.axis} with "
        f"batch_axis {dict(linear.batch_axis)}; a factorized layer takes one "
        f"that contracts the input's last {n} axes (axis="
        f"{tuple(range(-n, 0))}) and has no batch axes")
  return tuple(linear.in_features), tuple(linear.out_features)


def require_linear(linear, caller: str) -> None:
  """`linear_features`' errors, for a `from_linear`."""
  linear_features(linear, caller)


def kernel_matrix(linear):
  """The kernel as its (inputs, outputs) matrix, in float32."""
  in_shape, out_shape = linear_features(linear, "kernel_matrix")
  return linear.kernel[...].astype(jnp.float32).reshape(
      math.prod(in_shape), math.prod(out_shape))


def check_linear(layer, linear, caller: str) -> None:
  """ValueError unless `layer` maps as many features as `linear`."""
  in_shape, out_shape = linear_features(linear, caller)
  if (layer.in_features, layer.out_features) != (math.prod(in_shape),
                                                 math.prod(out_shape)):
    raise ValueError(
        f"{caller}: in_shape {layer.in_shape} and out_shape "
        f"{layer.out_shape} hold {layer.in_features} -> "
        f"{layer.out_features} features, but the linear layer maps "
        f"{math.prod(in_shape)} -> {math.prod(out_shape)}")


def copy_bias(layer, linear) -> None:
  """`linear`'s bias, flattened, into `layer`'s."""
  if linear.bias is not None:
    layer.bias[...] = linear.bias[...].reshape(-1)
