"""`BatchNorm`: `nnx.BatchNorm` whose training-mode statistics and gradient
run as matrix-vector products on the CPU (`functional.batch_norm`)."""

import jax
import jax.numpy as jnp
from flax import nnx

from cpac_jax.functional import batch_norm

__all__ = ["BatchNorm"]


class BatchNorm(nnx.BatchNorm):
  """`nnx.BatchNorm`, the same arguments, parameters and statistics (a
  checkpoint of one loads into the other), whose training-mode call with
  the defaults that matter here (channels last, scale and bias, the fast
  variance, no mask, no `axis_name`, a float32, bfloat16 or float16
  computation) runs on the CPU through
  `functional.batch_norm`: XLA's CPU sums over (N, H, W) are slow loops,
  and on the CPU they become matrix-vector products, forward and backward.
  Every other call, and every call off the CPU, is `nnx.BatchNorm`'s.
  Reverse-mode differentiation only: `jax.jvp` through a training call
  on the CPU raises.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> norm = BatchNorm(4, rngs=nnx.Rngs(0))
    >>> y = norm(jnp.arange(24.0).reshape(2, 3, 4))
    >>> y.shape, [round(m, 3) for m in norm.mean[...].tolist()]  # 1% moved
    ((2, 3, 4), [0.1, 0.11, 0.12, 0.13])
  """

  def __call__(self, x, use_running_average: bool | None = None, *,
               mask: jax.Array | None = None):
    """(..., C) -> (..., C)."""
    running = (self.use_running_average if use_running_average is None
               else use_running_average)
    if (running is not False or mask is not None
        or self.axis not in (-1, x.ndim - 1) or self.axis_name is not None
        or not self.use_fast_variance or self.scale is None
        or self.bias is None or jax.default_backend() != "cpu"):
      return super().__call__(x, use_running_average, mask=mask)
    x, _, _, scale, bias = self.promote_dtype(
        (x, self.mean[...], self.var[...], self.scale[...], self.bias[...]),
        dtype=self.dtype)
    if x.dtype not in (jnp.float32, jnp.bfloat16, jnp.float16):
      return super().__call__(x, use_running_average, mask=mask)
    y, mean, var = batch_norm(x, scale, bias, self.epsilon)
    # as nnx.BatchNorm updates them
    stop = (jax.lax.stop_gradient
            if self.mean._can_update or self.var._can_update
            else lambda value: value)
    keep = self.momentum
    self.mean[...] = stop(keep * self.mean[...] + (1 - keep) * mean)
    self.var[...] = stop(keep * self.var[...] + (1 - keep) * var)
    return y
