"""A small VGG-style CNN with enough conv weights for whole-model
compression to matter (`cpac_jax.compress`), trainable on a CPU in minutes."""

import jax
import jax.numpy as jnp
from flax import nnx

from cpac_jax.layers import BatchNorm, CPConv, TTConv, TuckerConv
from cpac_jax.tensor import RankSpec

__all__ = ["CNN", "apply_stages", "conv_stages", "max_pool_2x2"]

# Conv widths; "M" is a 2x2 max-pool.
STAGES = (32, "M", 32, 64, "M", 64, 128)


def conv_stages(widths, channels: int, make_conv, rngs: nnx.Rngs,
                dtype=None) -> tuple[nnx.List, nnx.List]:
  """(convs, norms): the 3x3 convs `widths` names ("M" a 2x2 max-pool),
  the i-th `make_conv(in_channels, width, i)`, each with its batch norm
  (`layers.BatchNorm`) computing in `dtype` (its statistics in float32
  whatever it is)."""
  convs, norms = [], []
  for width in widths:
    if width == "M":
      continue
    convs.append(make_conv(channels, width, len(convs)))
    norms.append(BatchNorm(width, dtype=dtype, rngs=rngs))
    channels = width
  return nnx.List(convs), nnx.List(norms)


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """`nnx.max_pool(x, (2, 2), strides=(2, 2))` (VALID) of x (N, H, W, C), as
  a max over a reshape: its gradient is an elementwise select, not XLA's
  select-and-scatter, slow on the CPU. The gradient differs from
  nnx.max_pool's only at tied maxima (shared among them, not given to
  one)."""
  n, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2]
  return jnp.max(jnp.reshape(x, (n, h // 2, 2, w // 2, 2, c)), axis=(2, 4))


def apply_stages(widths, convs, norms, x: jax.Array,
                 pool=lambda x: nnx.max_pool(x, (2, 2), strides=(2, 2))
                 ) -> jax.Array:
  """`x` through `conv_stages`' layers: conv, batch norm, ReLU; `pool`s."""
  layers = iter(zip(convs, norms))
  for width in widths:
    if width == "M":
      x = pool(x)
    else:
      conv, norm = next(layers)
      x = nnx.relu(norm(conv(x)))
  return x


class CNN(nnx.Module):
  """3x3 convs (`widths`, "M" a 2x2 max-pool), each with batch norm and
  ReLU, then global average pooling and one `nnx.Linear` classifier.

  With the default widths on 28x28 images: five convs, 1->32 at 28x28,
  32->32 and 32->64 at 14x14, 64->64 and 64->128 at 7x7; 138,528 conv
  weights, 99.8% of them in the four convs after the first.

  Variants (`factorization`): "dense" (nnx.Conv throughout), "cp" or
  "tucker" or "tt" (every conv but the first a CPConv, TuckerConv or
  TTConv at `rank`).

  `dtype` is every layer's compute dtype (e.g. jnp.bfloat16; None: as the
  inputs and float32 parameters promote), batch norm's included; the
  parameters are float32 whatever it is, and the logits come out in it.

  Example:
    >>> from flax import nnx
    >>> net = CNN(input_shape=(28, 28, 1), num_classes=10, rngs=nnx.Rngs(0))
    >>> net(jnp.zeros((2, 28, 28, 1))).shape
    (2, 10)
  """

  def __init__(self, *, factorization: str = "dense", rank: RankSpec = 0.1,
               input_shape=(28, 28, 1), num_classes: int = 10,
               widths=STAGES, implementation: str = "auto", dtype=None,
               rngs: nnx.Rngs):
    layer = {"dense": None, "cp": CPConv, "tucker": TuckerConv,
             "tt": TTConv}
    if factorization not in layer:
      raise ValueError(f"CNN: factorization must be one of {tuple(layer)}, "
                       f"got {factorization!r}")
    self.widths = tuple(widths)

    def make_conv(channels, width, index):
      if layer[factorization] and index:
        return layer[factorization](channels, width, (3, 3), rank=rank,
                                    implementation=implementation,
                                    dtype=dtype, rngs=rngs)
      return nnx.Conv(channels, width, (3, 3), dtype=dtype, rngs=rngs)

    self.convs, self.norms = conv_stages(self.widths, input_shape[-1],
                                         make_conv, rngs, dtype)
    self.out = nnx.Linear(self.convs[-1].out_features, num_classes,
                          dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """(N, H, W, C) -> logits (N, classes)."""
    x = apply_stages(self.widths, self.convs, self.norms, x)
    return self.out(jnp.mean(x, axis=(1, 2)))
