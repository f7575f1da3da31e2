"""A layer called on a batch without examples. Private to
`cpac_jax.layers`."""

import jax
import jax.numpy as jnp


def empty_batch(layer, x: jax.Array, batch_axes: int) -> jax.Array:
  """What `layer` returns for `x`, whose first `batch_axes` axes hold no
  example: zeros of the shape one example gives, under `x`'s batch axes,
  as `nnx.Conv` and `nnx.Linear` return for an empty batch."""
  one = jax.ShapeDtypeStruct((1,) * batch_axes + x.shape[batch_axes:],
                             x.dtype)
  out = jax.eval_shape(layer, one)
  return jnp.zeros(x.shape[:batch_axes] + out.shape[batch_axes:], out.dtype)
