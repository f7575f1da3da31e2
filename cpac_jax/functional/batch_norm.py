"""Batch normalization in training mode with every reduction, forward and
backward, a matrix-vector product.

XLA's CPU backend runs a sum over every axis but the channels (the batch
statistics, and in the gradient the sums of the cotangent) as a slow
loop; as `ones @ x` on the (rows, channels) view it is a matrix-vector
product, memory-bound. Autodiff of the statistics would bring the slow
sums back (the transpose of a broadcast is a sum), so the gradient is
written out.
"""

import jax
import jax.numpy as jnp

__all__ = ["batch_norm"]


def batch_norm(x: jax.Array, scale: jax.Array, bias: jax.Array,
               epsilon: float = 1e-5
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(y, mean, var) of x (..., C) normalized over every axis but the last:
  y = (x - mean) / sqrt(var + epsilon) * scale + bias, where mean and var
  (the biased variance, E[x^2] - E[x]^2 clipped at 0) are x's statistics
  over those axes, computed in float32 whatever x's dtype; y comes out in
  x's dtype. What `nnx.BatchNorm` computes in training mode with its
  defaults for a float32, bfloat16 or float16 x, and its gradient with
  respect to x, scale, bias (and through mean and var); reverse mode only
  (a custom VJP: `jax.jvp` through it raises).

  Example:
    >>> x = jnp.array([[1.0, 2.0], [3.0, 6.0]])
    >>> y, mean, var = batch_norm(x, jnp.ones(2), jnp.zeros(2), epsilon=0.0)
    >>> y.tolist(), mean.tolist(), var.tolist()
    ([[-1.0, -1.0], [1.0, 1.0]], [2.0, 4.0], [1.0, 4.0])
  """
  if scale.shape != x.shape[-1:] or bias.shape != x.shape[-1:]:
    raise ValueError(
        f"batch_norm: scale {scale.shape} and bias {bias.shape} must both "
        f"be ({x.shape[-1]},), the channels of x {x.shape}")
  return _batch_norm(x, scale, bias, epsilon)


def _rows(x: jax.Array) -> jax.Array:
  return jnp.reshape(x, (-1, x.shape[-1])).astype(jnp.float32)


def _forward(x, scale, bias, epsilon):
  rows = _rows(x)
  weights = jnp.full((rows.shape[0],), 1 / rows.shape[0], jnp.float32)
  mean = weights @ rows
  raw = weights @ jnp.square(rows) - jnp.square(mean)
  var = jnp.maximum(0.0, raw)
  inverse = jax.lax.rsqrt(var + epsilon)
  normalized = (x.astype(jnp.float32) - mean) * inverse
  y = (normalized * scale.astype(jnp.float32) + bias).astype(x.dtype)
  # the share of the gradient that flows through the clip, as autodiff of
  # jnp.maximum gives it: all above 0, none below, half at a tie
  unclipped = jnp.where(raw > 0, 1.0, jnp.where(raw == 0, 0.5, 0.0))
  return (y, mean, var), (x, mean, inverse, unclipped, scale, bias)


def _backward(epsilon, residuals, cotangents):
  del epsilon
  x, mean, inverse, unclipped, scale, bias = residuals
  dy, dmean, dvar = cotangents
  rows = _rows(dy)
  count = rows.shape[0]
  ones = jnp.ones((count,), jnp.float32)
  centered = x.astype(jnp.float32) - mean
  normalized = centered * inverse
  dbias = ones @ rows
  dscale = ones @ (rows * _rows(normalized))
  dx = (scale.astype(jnp.float32) * inverse
        * (dy.astype(jnp.float32)
           - (dbias + unclipped * normalized * dscale) / count)
        + (dmean + 2 * unclipped * dvar * centered) / count)
  return (dx.astype(x.dtype), dscale.astype(scale.dtype),
          dbias.astype(bias.dtype))


_batch_norm = jax.custom_vjp(lambda x, scale, bias, epsilon:
                             _forward(x, scale, bias, epsilon)[0],
                             nondiff_argnums=(3,))
_batch_norm.defvjp(_forward, _backward)
