"""`LowRankEmbed`: an embedding table held as two thin matrices, table =
left @ right, so a vocabulary of V rows of D features costs R (V + D)
weights."""

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes

from cpac_jax.layers import _init

__all__ = ["LowRankEmbed"]


class LowRankEmbed(nnx.Module):
  """What `nnx.Embed` computes, from a rank-R table: `__call__(ids)` looks
  the ids' rows of `left` (V, R) up and maps them by `right` (R, D), and
  `attend(query)` (logits over the vocabulary, for tied output layers) is
  (query @ right^T) @ left^T. At init the table's entries have mean square
  1, as Flax's default embedding init.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from cpac_jax.layers import LowRankEmbed, count_params
    >>> embed = LowRankEmbed(1000, 64, rank=8, rngs=nnx.Rngs(0))
    >>> embed(jnp.array([[1, 2, 3]])).shape, count_params(embed)
    ((1, 3, 64), 8512)
  """

  def __init__(self, num_embeddings: int, features: int, *, rank: int,
               dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    name = f"LowRankEmbed({num_embeddings}, {features})"
    for what, value in (("num_embeddings", num_embeddings),
                        ("features", features)):
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: {what} {value!r} must be an int >= 1")
    top = min(num_embeddings, features)
    if isinstance(rank, bool) or not isinstance(rank, int) or not (
        1 <= rank <= top):
      raise ValueError(f"{name}: rank {rank!r} must be an int in 1..{top}")
    self.num_embeddings, self.features, self.rank = (num_embeddings,
                                                     features, rank)
    self.dtype = dtype
    left, right = _init.cp_factors(rngs.params(), (num_embeddings, features),
                                   rank, 1, param_dtype)
    self.left = nnx.Param(left)
    self.right = nnx.Param(right.T)

  def table(self) -> jax.Array:
    """The (num_embeddings, features) table this layer represents."""
    return self.left[...] @ self.right[...]

  def __call__(self, inputs: jax.Array) -> jax.Array:
    """Integer ids of any shape -> (*inputs.shape, features)."""
    if not jnp.issubdtype(inputs.dtype, jnp.integer):
      raise ValueError(f"LowRankEmbed: ids must be integers, got "
                       f"{inputs.dtype}")
    left, right = dtypes.promote_dtype((self.left[...], self.right[...]),
                                       dtype=self.dtype, inexact=False)
    return jnp.take(left, inputs, axis=0) @ right

  def attend(self, query: jax.Array) -> jax.Array:
    """(..., features) -> (..., num_embeddings): each query's inner product
    with every row of the table."""
    query, left, right = dtypes.promote_dtype(
        (query, self.left[...], self.right[...]), dtype=self.dtype)
    return (query @ right.T) @ left.T

  @classmethod
  def from_embed(cls, embed: nnx.Embed, *, rank: int,
                 rngs: nnx.Rngs | None = None) -> "LowRankEmbed":
    """A LowRankEmbed initialised from a trained `nnx.Embed` by the
    truncated SVD of its table (each side taking the square roots of the
    singular values): the closest rank-R table in the Frobenius norm."""
    if not isinstance(embed, nnx.Embed):
      raise TypeError(f"LowRankEmbed.from_embed takes an nnx.Embed, got "
                      f"{type(embed).__name__}")
    layer = cls(embed.num_embeddings, embed.features, rank=rank,
                dtype=embed.dtype, param_dtype=embed.param_dtype,
                rngs=rngs or nnx.Rngs(0))
    u, s, vt = jnp.linalg.svd(embed.embedding[...].astype(jnp.float32),
                              full_matrices=False)
    root = jnp.sqrt(s[:rank])
    layer.left[...] = (u[:, :rank] * root).astype(embed.param_dtype)
    layer.right[...] = (root[:, None] * vt[:rank]).astype(embed.param_dtype)
    return layer
