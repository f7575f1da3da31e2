"""Argument checks the factorized dense layers share. Private to
`cpac_jax.layers`."""

from flax import nnx

from cpac_jax import functional


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


def require_linear(linear, caller: str) -> None:
  """TypeError unless `linear` is an `nnx.Linear`."""
  if not isinstance(linear, nnx.Linear):
    raise TypeError(f"{caller} takes an nnx.Linear, got "
                    f"{type(linear).__name__}"
                    + ("; CPConv, TuckerConv and TTConv.from_conv take an "
                       "nnx.Conv" if isinstance(linear, nnx.Conv) else ""))


def check_linear(layer, linear, caller: str) -> None:
  """ValueError unless `layer` maps as many features as `linear`."""
  if (layer.in_features, layer.out_features) != (linear.in_features,
                                                 linear.out_features):
    raise ValueError(
        f"{caller}: in_shape {layer.in_shape} and out_shape "
        f"{layer.out_shape} hold {layer.in_features} -> "
        f"{layer.out_features} features, but the linear layer maps "
        f"{linear.in_features} -> {linear.out_features}")
