"""The TTL paper's MLP: a 784 -> 300 layer held as a Tucker tensor."""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from cpac_jax.layers import TTDense, TuckerDense
from cpac_jax.tensor import RankSpec

__all__ = ["TTLMLP"]


class TTLMLP(nnx.Module):
  """Flatten -> hidden layer (TuckerDense, or with factorization "tt" the
  TT-matrix TTDense, on `in_shape` -> `hidden_shape`, or its dense twin
  nnx.Linear) -> ReLU -> nnx.Linear(hidden -> classes). A TTDense needs
  `hidden_shape` with as many modes as `in_shape`, e.g. (15, 20) for
  (28, 28).

  With factorization "dense" and `bottleneck` b, the hidden layer is
  nnx.Linear(features -> b, no bias) then nnx.Linear(b -> hidden): a dense
  layer of rank at most b, as TuckerDense's matrix has rank at most its
  output rank.

  `in_shape` defaults to the image's (H, W), or (H, W, C) for colour.

  `dtype` is every layer's compute dtype (e.g. jnp.bfloat16; None: as the
  inputs and float32 parameters promote); the parameters are float32
  whatever it is, and the logits come out in it.

  For MNIST: in_shape (28, 28), hidden_shape (300,), rank (5, 5, 10): the
  hidden layer has 3,530 weights instead of 235,200 (66.63x fewer).

  Example:
    >>> from flax import nnx
    >>> net = TTLMLP(factorization="tucker", rank=(5, 5, 10),
    ...              rngs=nnx.Rngs(0))
    >>> net(jnp.zeros((3, 28, 28, 1))).shape
    (3, 10)
  """

  def __init__(self, *, factorization: str = "tucker",
               rank: RankSpec = (5, 5, 10),
               input_shape: Sequence[int] = (28, 28, 1),
               in_shape: Sequence[int] | None = None,
               hidden_shape: Sequence[int] = (300,), num_classes: int = 10,
               bottleneck: int | None = None, implementation: str = "auto",
               dtype=None, rngs: nnx.Rngs):
    if factorization not in ("tucker", "tt", "dense"):
      raise ValueError(
          f"TTLMLP: factorization must be 'tucker', 'tt' or 'dense', got "
          f"{factorization!r}")
    if in_shape is None:  # (H, W) for grey images, else (H, W, C)
      in_shape = tuple(input_shape[:-1]) if input_shape[-1] == 1 else tuple(
          input_shape)
    features = math.prod(input_shape)
    if math.prod(in_shape) != features:
      raise ValueError(
          f"TTLMLP: in_shape {tuple(in_shape)} holds "
          f"{math.prod(in_shape)} features, but inputs of shape "
          f"{tuple(input_shape)} have {features}")
    hidden = math.prod(hidden_shape)
    if bottleneck is not None and not (
        factorization == "dense" and isinstance(bottleneck, int)
        and 1 <= bottleneck <= min(features, hidden)):
      raise ValueError(
          f"TTLMLP: bottleneck must be an int in 1..{min(features, hidden)} "
          f"with factorization 'dense', got {bottleneck!r} with "
          f"{factorization!r}")
    self.bottleneck = (None if bottleneck is None else nnx.Linear(
        features, bottleneck, use_bias=False, dtype=dtype, rngs=rngs))
    if factorization in ("tucker", "tt"):
      layer = TuckerDense if factorization == "tucker" else TTDense
      self.hidden = layer(in_shape, hidden_shape, rank=rank,
                          implementation=implementation, dtype=dtype,
                          rngs=rngs)
    else:
      self.hidden = nnx.Linear(bottleneck or features, hidden, dtype=dtype,
                               rngs=rngs)
    self.out = nnx.Linear(hidden, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """(N, H, W, C) or (N, features) -> logits (N, classes)."""
    x = jnp.reshape(x, (x.shape[0], -1))
    if self.bottleneck is not None:
      x = self.bottleneck(x)
    return self.out(nnx.relu(self.hidden(x)))
