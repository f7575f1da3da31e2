"""`LowRankDense`: a dense layer whose weight matrix is the product of two
thin matrices, the rank-R form that transformer-compression papers give a
projection (its truncated SVD)."""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from cpac_jax import functional
from cpac_jax.layers import _dense, _init

__all__ = ["LowRankDense"]


class LowRankDense(nnx.Module):
  """A dense layer with weight W = left @ right, left (in, R), right (R,
  out): R (in + out) weights in place of in x out.

  Inputs and outputs may be tensorized as TuckerDense's are: (N, *in_shape)
  -> (N, *out_shape), or flat (N, prod(in_shape)) -> (N, prod(out_shape)),
  so it takes the place of an `nnx.LinearGeneral` (attention's q/k/v and
  output projections) as well as of an `nnx.Linear`. At init W's entries
  have mean square 1 / prod(in_shape), as Flax's default init gives a
  Linear's.

  Args:
    in_shape: the input features, an int or a tuple (e.g. (heads, head_dim)).
    out_shape: the output features, an int or a tuple.
    rank: R, an int in 1..min(prod(in_shape), prod(out_shape)).
    use_bias, dtype, param_dtype, precision, rngs: as `nnx.Linear`'s.
    implementation: "auto", "factorized" ((x @ left) @ right) or
      "reconstructed" (x @ W), as the other layers take it.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from cpac_jax.layers import LowRankDense, count_params
    >>> layer = LowRankDense(784, 300, rank=16, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((2, 784))).shape, count_params(layer)
    ((2, 300), 17644)
  """

  def __init__(self, in_shape: int | Sequence[int],
               out_shape: int | Sequence[int], *, rank: int,
               use_bias: bool = True, implementation: str = "auto",
               dtype=None, param_dtype=jnp.float32, precision=None,
               rngs: nnx.Rngs):
    name = f"LowRankDense({in_shape}->{out_shape})"
    self.in_shape = _dense.shape(in_shape, "in_shape", name)
    self.out_shape = _dense.shape(out_shape, "out_shape", name)
    self.implementation = functional.check_implementation(implementation, name)
    top = min(self.in_features, self.out_features)
    if isinstance(rank, bool) or not isinstance(rank, int) or not (
        1 <= rank <= top):
      raise ValueError(f"{name}: rank {rank!r} must be an int in 1..{top}")
    self.rank = rank
    self.dtype = dtype
    self.precision = precision
    left, right = _init.cp_factors(rngs.params(), (self.in_features,
                                                   self.out_features),
                                   rank, self.in_features, param_dtype)
    self.left = nnx.Param(left)
    self.right = nnx.Param(right.T)
    self.bias = (nnx.Param(jnp.zeros((self.out_features,), param_dtype))
                 if use_bias else None)

  @property
  def in_features(self) -> int:
    return math.prod(self.in_shape)

  @property
  def out_features(self) -> int:
    return math.prod(self.out_shape)

  def weight_tensor(self) -> jax.Array:
    """The dense weight this layer represents, in_shape + out_shape."""
    return jnp.reshape(self.left[...] @ self.right[...],
                       self.in_shape + self.out_shape)

  def flops(self, input_shape: Sequence[int]) -> dict[str, int]:
    """Multiply-adds of each implementation for an input (N,
    prod(in_shape)) or (N, *in_shape)
    (`cpac_jax.functional.low_rank_dense_flops`)."""
    batch_shape, _ = _dense.batch_shape(self, input_shape)
    return functional.low_rank_dense_flops(
        math.prod(batch_shape), self.in_features, self.out_features,
        self.rank)

  def __call__(self, x: jax.Array, *, out_sharding=None) -> jax.Array:
    """(N, prod(in_shape)) -> (N, prod(out_shape)), or (N, *in_shape) ->
    (N, *out_shape); extra leading batch axes are kept.
    `out_sharding`, as `nnx.Linear` and `nnx.LinearGeneral` take it (attention
    passes it to its projections): the output's sharding, if given."""
    return _dense.apply(
        self, x, (self.left[...], self.right[...]),
        lambda x, left, right: functional.low_rank_dense(
            x, left, right, implementation=self.implementation,
            precision=self.precision), out_sharding)

  @classmethod
  def from_linear(cls, linear: nnx.Linear | nnx.LinearGeneral, *, rank: int,
                  implementation: str = "auto",
                  rngs: nnx.Rngs | None = None) -> "LowRankDense":
    """A LowRankDense initialised from a trained `nnx.Linear` (or an
    `nnx.LinearGeneral` contracting the input's last axes) by the truncated
    SVD of its kernel matrix, U_R S_R V_R^T, each side taking S_R^(1/2):
    the closest rank-R weight in the Frobenius norm. Its shapes are the
    linear layer's features."""
    in_shape, out_shape = _dense.linear_features(
        linear, "LowRankDense.from_linear")
    layer = cls(in_shape, out_shape, rank=rank,
                use_bias=linear.bias is not None,
                implementation=implementation, dtype=linear.dtype,
                param_dtype=linear.param_dtype, precision=linear.precision,
                rngs=rngs or nnx.Rngs(0))
    u, s, vt = jnp.linalg.svd(_dense.kernel_matrix(linear),
                              full_matrices=False)
    root = jnp.sqrt(s[:rank])
    layer.left[...] = (u[:, :rank] * root).astype(linear.param_dtype)
    layer.right[...] = (root[:, None] * vt[:rank]).astype(linear.param_dtype)
    _dense.copy_bias(layer, linear)
    return layer
