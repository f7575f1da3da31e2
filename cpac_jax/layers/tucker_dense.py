"""`TuckerDense`: the Tucker Tensor Layer (TTL), a dense layer whose weight
matrix is the unfolding of a Tucker-form tensor."""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from cpac_jax import functional, tensor
from cpac_jax.layers import _dense, _init

__all__ = ["TuckerDense"]


class TuckerDense(nnx.Module):
  """The Tucker Tensor Layer: a dense layer with a Tucker-form weight.

  The weight, of shape in_shape + out_shape, is core x_0 U_0 ... x_{M-1}
  U_{M-1}; its unfolding (prod(in_shape), prod(out_shape)) is the weight
  matrix of the `nnx.Linear` it replaces. For the TTL paper's MNIST layer,
  in_shape=(28, 28), out_shape=(300,), rank=(5, 5, 10): 3,530 parameters
  instead of 235,200 (66.63x fewer).

  The factorized forward projects the tensorized input onto the input factors
  (one mode product each, in the cheapest order), contracts with the core and
  expands with the output factors; no dense weight is formed.
  `"reconstructed"` rebuilds the weight and does one matmul; `"auto"` picks
  the cheaper for the batch at hand, counting the factorized path's
  intermediates as well as multiply-adds (`cpac_jax.functional.choose`).
  The computation is `cpac_jax.functional.tucker_dense`; this class holds
  the parameters.

  Initialisation: factors have orthonormal columns, which keep the norm, and
  the core is a random direction scaled so the weight entries have mean
  square v = 1 / prod(in_shape), the variance of Flax's default
  `lecun_normal`, whatever the rank.

  Args:
    in_shape: the tensorized input, e.g. (28, 28) for 784 features.
    out_shape: the tensorized output, e.g. (300,).
    rank: an int (every mode), one int per mode of in_shape + out_shape, a
      float in (0, 1] or 'same'.
    use_bias, dtype, param_dtype, precision: as `nnx.Linear`.
    implementation: 'auto', 'factorized' or 'reconstructed'.
    rngs: random streams for initialisation.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from cpac_jax.layers import TuckerDense
    >>> ttl = TuckerDense(in_shape=(28, 28), out_shape=(300,),
    ...                   rank=(5, 5, 10), rngs=nnx.Rngs(0))
    >>> ttl(jnp.ones((4, 784))).shape
    (4, 300)
    >>> ttl.weight_tensor().shape
    (28, 28, 300)
  """

  def __init__(self, in_shape: int | Sequence[int],
               out_shape: int | Sequence[int], *, rank: tensor.RankSpec,
               use_bias: bool = True, implementation: str = "auto",
               dtype=None, param_dtype=jnp.float32, precision=None,
               rngs: nnx.Rngs):
    name = f"TuckerDense({in_shape}->{out_shape})"
    self.in_shape = _dense.shape(in_shape, "in_shape", name)
    self.out_shape = _dense.shape(out_shape, "out_shape", name)
    self.implementation = functional.check_implementation(implementation, name)
    self.dtype = dtype
    self.precision = precision
    shape = self.in_shape + self.out_shape
    self.rank = tensor.tucker_rank(shape, rank, layer=name)
    core, factors = _init.tucker(rngs.params(), shape, self.rank,
                                 range(len(shape)), math.prod(self.in_shape),
                                 param_dtype)
    self.core = nnx.Param(core)
    self.factors = nnx.List([nnx.Param(f) for f in factors])
    self.bias = (nnx.Param(jnp.zeros((math.prod(self.out_shape),),
                                     param_dtype)) if use_bias else None)

  @property
  def in_features(self) -> int:
    return math.prod(self.in_shape)

  @property
  def out_features(self) -> int:
    return math.prod(self.out_shape)

  def weight_tensor(self) -> jax.Array:
    """The dense weight this layer represents, in_shape + out_shape."""
    return tensor.tucker_to_tensor(
        (self.core[...], [f[...] for f in self.factors]))

  def flops(self, input_shape: Sequence[int]) -> dict[str, int]:
    """Multiply-adds of each implementation for an input (N, prod(in_shape))
    or (N, *in_shape), and the entries of the factorized path's
    intermediates (`cpac_jax.functional.tucker_dense_flops`)."""
    _dense.batch_shape(self, input_shape)  # a clear error for a wrong shape
    return functional.tucker_dense_flops(input_shape, self.in_shape,
                                         self.out_shape, self.rank)

  def __call__(self, x: jax.Array, *, out_sharding=None) -> jax.Array:
    """(N, prod(in_shape)) -> (N, prod(out_shape)), or (N, *in_shape) ->
    (N, *out_shape); extra leading batch axes are kept.
    `out_sharding`, as `nnx.Linear` and `nnx.LinearGeneral` take it (attention
    passes it to its projections): the output's sharding, if given."""
    return _dense.apply(
        self, x, [self.core[...], *[f[...] for f in self.factors]],
        lambda x, core, *factors: functional.tucker_dense(
            x, core, factors, self.in_shape,
            implementation=self.implementation, precision=self.precision),
        out_sharding)

  @classmethod
  def from_linear(cls, linear: nnx.Linear | nnx.LinearGeneral, *,
                  in_shape: int | Sequence[int],
                  out_shape: int | Sequence[int], rank: tensor.RankSpec,
                  method: str = "hooi", implementation: str = "auto",
                  rngs: nnx.Rngs | None = None) -> "TuckerDense":
    """A TuckerDense initialised from a trained `nnx.Linear` (or an
    `nnx.LinearGeneral` contracting the input's last axes) by a Tucker
    decomposition (HOOI by default) of its tensorized kernel."""
    _dense.require_linear(linear, "TuckerDense.from_linear")
    layer = cls(in_shape, out_shape, rank=rank,
                use_bias=linear.bias is not None,
                implementation=implementation, dtype=linear.dtype,
                param_dtype=linear.param_dtype, precision=linear.precision,
                rngs=rngs or nnx.Rngs(0))
    _dense.check_linear(layer, linear, "TuckerDense.from_linear")
    kernel = jnp.reshape(_dense.kernel_matrix(linear),
                         layer.in_shape + layer.out_shape)
    core, factors = tensor.tucker(kernel, layer.rank, method=method)
    layer.core[...] = core.astype(linear.param_dtype)
    for param, factor in zip(layer.factors, factors):
      param[...] = factor.astype(linear.param_dtype)
    _dense.copy_bias(layer, linear)
    return layer
