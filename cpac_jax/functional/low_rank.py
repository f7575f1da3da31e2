"""A dense product through a rank-R weight held as two thin matrices, W =
left @ right (the form of the transformer-compression papers' SVD): forward
and multiply-adds."""

import jax
import jax.numpy as jnp

from cpac_jax.functional.implementation import choose

__all__ = ["low_rank_dense", "low_rank_dense_flops"]


def low_rank_dense_flops(batch: int, in_features: int, out_features: int,
                         rank: int) -> dict[str, int]:
  """Multiply-adds of each path for `batch` rows through left (in, R) @
  right (R, out), and the entries of the factorized path's intermediate."""
  return {"factorized": batch * rank * (in_features + out_features),
          "intermediates": batch * rank,
          "reconstructed": (in_features * rank * out_features
                            + batch * in_features * out_features)}


def low_rank_dense(x: jax.Array, left: jax.Array, right: jax.Array, *,
                   implementation: str = "auto",
                   precision=None) -> jax.Array:
  """(N, in) -> (N, out), no bias, through the weight left @ right.

  "factorized": (x @ left) @ right, no dense weight formed;
  "reconstructed": x @ (left @ right); "auto": the cheaper (`choose`).

  Example:
    >>> x, left, right = jnp.ones((2, 6)), jnp.ones((6, 1)), jnp.ones((1, 4))
    >>> low_rank_dense(x, left, right).tolist()
    [[6.0, 6.0, 6.0, 6.0], [6.0, 6.0, 6.0, 6.0]]
  """
  (in_features, rank), out_features = left.shape, right.shape[1]
  flops = low_rank_dense_flops(x.shape[0], in_features, out_features, rank)
  if choose(implementation, flops) == "reconstructed":
    return jnp.dot(x, jnp.dot(left, right, precision=precision),
                   precision=precision)
  return jnp.dot(jnp.dot(x, left, precision=precision), right,
                 precision=precision)
