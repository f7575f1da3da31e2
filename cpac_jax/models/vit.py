"""A small Vision Transformer built from Flax's own layers, whose attention
and MLP weights `cpac_jax.compress` replaces after training."""

import jax
import jax.numpy as jnp
from flax import nnx

from cpac_jax.tensor import RankSpec

__all__ = ["ViT"]


class Block(nnx.Module):
  """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

  def __init__(self, width: int, heads: int, hidden: int, dtype,
               rngs: nnx.Rngs):
    self.attn_norm = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(num_heads=heads, in_features=width,
                                       decode=False, dtype=dtype, rngs=rngs)
    self.mlp_norm = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)
    self.mlp = nnx.List([nnx.Linear(width, hidden, dtype=dtype, rngs=rngs),
                         nnx.Linear(hidden, width, dtype=dtype, rngs=rngs)])

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.attn(self.attn_norm(x))
    return x + self.mlp[1](nnx.gelu(self.mlp[0](self.mlp_norm(x))))


class ViT(nnx.Module):
  """A Vision Transformer (Dosovitskiy et al. 2021) for small images: the
  image cut into `patch` x `patch` patches, each embedded by one conv of
  that kernel and stride, plus a learned position embedding; `depth`
  pre-norm blocks of multi-head self-attention (`nnx.MultiHeadAttention`,
  its query/key/value/output projections `nnx.LinearGeneral`) and an MLP
  of two `nnx.Linear` with GELU; then a layer norm, the mean over the
  patches (no class token) and one `nnx.Linear` classifier. No dropout.

  Every weight is dense: a ViT is compressed after training, by
  `cpac_jax.compress` (its blocks' layers at "blocks/i/attn/query",
  "blocks/i/mlp/0", ...).

  Args:
    factorization: "dense" (the only one it takes).
    rank: unused (the registry's common signature).
    input_shape: (H, W, C), H and W multiples of `patch`.
    num_classes: outputs of the classifier.
    implementation: unused.
    depth, width, heads: blocks, embedding width, attention heads (width a
      multiple of heads).
    patch: patch side.
    mlp_ratio: the MLP's hidden width over `width`.
    dtype: every layer's compute dtype (None: its inputs').
    rngs: random streams for initialisation.

  Example:
    >>> vit = ViT(input_shape=(28, 28, 1), num_classes=10, depth=1, width=16,
    ...           heads=2, rngs=nnx.Rngs(0))
    >>> vit(jnp.ones((2, 28, 28, 1))).shape
    (2, 10)
  """

  def __init__(self, factorization: str = "dense", rank: RankSpec = 0, *,
               input_shape, num_classes: int, implementation: str = "auto",
               depth: int = 4, width: int = 128, heads: int = 4,
               patch: int = 7, mlp_ratio: int = 2, dtype=None,
               rngs: nnx.Rngs):
    del rank, implementation
    if factorization != "dense":
      raise ValueError(f"ViT: factorization must be 'dense' (compress it "
                       f"with cpac_jax.compress), got {factorization!r}")
    height, width_px, channels = input_shape
    if height % patch or width_px % patch:
      raise ValueError(f"ViT: the input's {height}x{width_px} is not a whole "
                       f"number of {patch}x{patch} patches; give a patch "
                       "that divides both")
    if width % heads:
      raise ValueError(f"ViT: width {width} is not a multiple of heads "
                       f"{heads}")
    self.patches = nnx.Conv(channels, width, (patch, patch), strides=patch,
                            padding="VALID", dtype=dtype, rngs=rngs)
    count = (height // patch) * (width_px // patch)
    self.position = nnx.Param(0.02 * jax.random.normal(
        rngs.params(), (count, width)))
    self.blocks = nnx.List([Block(width, heads, mlp_ratio * width, dtype,
                                  rngs) for _ in range(depth)])
    self.norm = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)
    self.head = nnx.Linear(width, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """(N, H, W, C) -> (N, num_classes)."""
    x = self.patches(x)
    x = jnp.reshape(x, (x.shape[0], -1, x.shape[-1]))
    x = x + self.position[...].astype(x.dtype)
    for block in self.blocks:
      x = block(x)
    return self.head(jnp.mean(self.norm(x), axis=1))
