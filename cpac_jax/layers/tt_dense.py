"""`TTDense`: a dense layer whose weight matrix is a TT-matrix."""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from cpac_jax import functional, tensor
from cpac_jax.layers import _dense, _init

__all__ = ["TTDense"]


class TTDense(nnx.Module):
  """A dense layer whose weight is a TT-matrix (Novikov et al., 2015).

  The input features are tensorized as `in_shape` and the outputs as
  `out_shape`, with as many modes each; core k, of shape (r_k, in_k, out_k,
  r_{k+1}), pairs input mode k with output mode k, and the weight matrix
  (prod(in_shape), prod(out_shape)) is the TT-matrix they hold, as
  TensorLy-Torch's TT-matrix ("blocktt") linear layer holds it.

  The forward runs one plan (`cpac_jax.functional.TTDensePlan`): the cores
  cut into contiguous groups, each group's cores merged into one, then the
  tensorized input contracted with one merged core at a time, left to
  right or right to left, each turning its input modes into its output
  modes. `"factorized"` runs the cheapest plan of two groups or more, so
  no dense weight is formed; `"reconstructed"` the one group: it rebuilds
  the weight and does one matmul; `"auto"` (the default) the cheapest plan
  of all, priced as `TuckerDense` prices its paths
  (`cpac_jax.functional.choose`). The computation is
  `cpac_jax.functional.tt_dense`; `plan(input_shape)` names the plan.

  Initialisation: every core a random direction of fixed mean square, so
  the weight entries have mean square v = 1 / prod(in_shape), the variance
  of Flax's default `lecun_normal`, whatever the rank.

  Args:
    in_shape: the tensorized input, e.g. (4, 7, 4, 7) for 784 features.
    out_shape: the tensorized output, as many modes as in_shape.
    rank: an int (every TT rank, up to the largest each bond can need), the
      d - 1 inner TT ranks (or d + 1 with the boundary 1s), a float in
      (0, 1] or 'same' (`cpac_jax.tensor.tt_rank` over the merged modes
      in_k * out_k).
    use_bias, dtype, param_dtype, precision: as `nnx.Linear`.
    implementation: 'auto', 'factorized' or 'reconstructed'.
    rngs: random streams for initialisation.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from cpac_jax.layers import TTDense
    >>> tt = TTDense(in_shape=(4, 7, 4, 7), out_shape=(2, 5, 5, 6), rank=4,
    ...              rngs=nnx.Rngs(0))
    >>> tt.rank
    (1, 4, 4, 4, 1)
    >>> tt(jnp.ones((3, 784))).shape
    (3, 300)
    >>> tt.plan((3, 784)).groups, tt.plan((3, 784)).direction
    (((0, 1), (2, 3)), 'left_to_right')
  """

  def __init__(self, in_shape: int | Sequence[int],
               out_shape: int | Sequence[int], *, rank: tensor.RankSpec,
               use_bias: bool = True, implementation: str = "auto",
               dtype=None, param_dtype=jnp.float32, precision=None,
               rngs: nnx.Rngs):
    name = f"TTDense({in_shape}->{out_shape})"
    self.in_shape = _dense.shape(in_shape, "in_shape", name)
    self.out_shape = _dense.shape(out_shape, "out_shape", name)
    if len(self.in_shape) != len(self.out_shape):
      raise ValueError(
          f"{name}: in_shape {self.in_shape} and out_shape {self.out_shape} "
          "must have as many modes each; a TT-matrix pairs input mode k with "
          "output mode k (pad a shape with 1s to match)")
    self.implementation = functional.check_implementation(implementation, name)
    self.dtype = dtype
    self.precision = precision
    merged = [i * o for i, o in zip(self.in_shape, self.out_shape)]
    self.rank = tensor.tt_rank(merged, rank, layer=name)
    core_shapes = [(self.rank[k], i, o, self.rank[k + 1]) for k, (i, o)
                   in enumerate(zip(self.in_shape, self.out_shape))]
    cores = _init.tt_cores(rngs.params(), core_shapes, self.in_features,
                           param_dtype)
    self.cores = nnx.List([nnx.Param(core) for core in cores])
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
    return tensor.tt_matrix_to_tensor([core[...] for core in self.cores])

  def flops(self, input_shape: Sequence[int]) -> dict[str, int]:
    """Multiply-adds of each implementation for an input (N, prod(in_shape))
    or (N, *in_shape), and the entries of the factorized path's
    intermediates (`cpac_jax.functional.tt_dense_flops`): "factorized" is
    the cheapest plan of two groups or more."""
    _dense.batch_shape(self, input_shape)  # a clear error for a wrong shape
    return functional.tt_dense_flops(input_shape, self.in_shape,
                                     self.out_shape, self.rank)

  def plan(self, input_shape: Sequence[int]) -> functional.TTDensePlan:
    """The plan the forward runs on an input (N, prod(in_shape)) or (N,
    *in_shape) for the layer's `implementation`
    (`cpac_jax.functional.tt_dense_plan`): its groups of cores, direction
    and counts."""
    _dense.batch_shape(self, input_shape)  # a clear error for a wrong shape
    return functional.tt_dense_plan(input_shape, self.in_shape,
                                    self.out_shape, self.rank,
                                    self.implementation)

  def __call__(self, x: jax.Array, *, out_sharding=None) -> jax.Array:
    """(N, prod(in_shape)) -> (N, prod(out_shape)), or (N, *in_shape) ->
    (N, *out_shape); extra leading batch axes are kept.
    `out_sharding`, as `nnx.Linear` and `nnx.LinearGeneral` take it (attention
    passes it to its projections): the output's sharding, if given."""
    return _dense.apply(
        self, x, [core[...] for core in self.cores],
        lambda x, *cores: functional.tt_dense(
            x, cores, implementation=self.implementation,
            precision=self.precision), out_sharding)

  @classmethod
  def from_linear(cls, linear: nnx.Linear | nnx.LinearGeneral, *,
                  in_shape: int | Sequence[int],
                  out_shape: int | Sequence[int], rank: tensor.RankSpec,
                  implementation: str = "auto",
                  rngs: nnx.Rngs | None = None) -> "TTDense":
    """A TTDense initialised from a trained `nnx.Linear` (or an
    `nnx.LinearGeneral` contracting the input's last axes) by TT-SVD of its
    kernel matrix (`cpac_jax.tensor.tt_matrix_svd`)."""
    _dense.require_linear(linear, "TTDense.from_linear")
    layer = cls(in_shape, out_shape, rank=rank,
                use_bias=linear.bias is not None,
                implementation=implementation, dtype=linear.dtype,
                param_dtype=linear.param_dtype, precision=linear.precision,
                rngs=rngs or nnx.Rngs(0))
    _dense.check_linear(layer, linear, "TTDense.from_linear")
    cores = tensor.tt_matrix_svd(_dense.kernel_matrix(linear),
                                 layer.in_shape, layer.out_shape, layer.rank)
    for param, core in zip(layer.cores, cores):
      param[...] = core.astype(linear.param_dtype)
    _dense.copy_bias(layer, linear)
    return layer
