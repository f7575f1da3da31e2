"""`CPConv`: a convolution whose kernel is held as a rank-R CP decomposition."""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes

from cpac_jax import functional, tensor
from cpac_jax.layers import _conv, _init

__all__ = ["CPConv"]


class CPConv(nnx.Module):
  """Convolution whose kernel is held as a rank-R CP decomposition (CPAC-Conv).

  The kernel of shape (*kernel_size, Cin, Cout), laid out as in `nnx.Conv`, is
  K = sum_r s_0[:, r] o ... o s_{d-1}[:, r] o a_in[:, r] o a_out[:, r], with
  one factor matrix per mode and no separate weights: R * (sum(kernel_size)
  + Cin + Cout) parameters, the CPAC-Conv count.

  The forward pass either contracts the input with the factors
  (`implementation="factorized"`: a 1x1 conv to R channels, a depthwise 1-D
  conv along each spatial axis, a 1x1 conv to Cout; no dense kernel is formed)
  or rebuilds the kernel and runs one dense conv (`"reconstructed"`). `"auto"`
  picks the cheaper for the input shape at hand, counting the factorized
  path's intermediate activations as well as multiply-adds
  (`cpac_jax.functional.choose`). The computation is
  `cpac_jax.functional.cp_conv`; this class holds the parameters.

  Initialisation: each factor column is a random direction whose entries
  have mean square (v / R)^(1/M) for M = d + 2 modes, so the kernel entries
  have mean square v = 1 / (prod(kernel_size) * Cin), the variance of Flax's
  default `lecun_normal` init, whatever the rank, and no rank-1 term starts
  out dominating or vanishing.

  Args:
    in_features: input channels Cin.
    out_features: output channels Cout.
    kernel_size: spatial size, an int or one per spatial axis; its length
      sets the dimension (1-D, 2-D, 3-D, ...).
    strides: an int or one per spatial axis.
    padding: 'SAME', 'VALID', an int, or one int or (low, high) per axis.
    kernel_dilation: an int or one per spatial axis.
    use_bias: whether to add a bias (initialised to zero).
    rank: CP rank R; an int, a float in (0, 1] for a fraction of the dense
      parameter count, or 'same' (see `cpac_jax.tensor.rank`).
    implementation: 'auto', 'factorized' or 'reconstructed'.
    dtype: computation dtype (default: inferred from input and params).
    param_dtype: dtype of the factors and bias.
    precision: passed to the convolution and the matmuls.
    conv_general_dilated: the convolution of the reconstructed path, as
      `nnx.Conv` takes it: `lax.conv_general_dilated`,
      `cpac_jax.layers.patches_conv`, or None (the default: picked per
      conv, see `cpac_jax.functional.conv.conv_lowering`).
    rngs: random streams for initialisation.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from cpac_jax.layers import CPConv
    >>> conv = CPConv(8, 16, kernel_size=(3, 3), rank=5, rngs=nnx.Rngs(0))
    >>> conv(jnp.ones((2, 28, 28, 8))).shape
    (2, 28, 28, 16)
    >>> conv.kernel_tensor().shape
    (3, 3, 8, 16)
  """

  def __init__(self, in_features: int, out_features: int,
               kernel_size: int | Sequence[int],
               strides: int | Sequence[int] = 1, *,
               padding: _conv.Padding = "SAME",
               kernel_dilation: int | Sequence[int] = 1,
               use_bias: bool = True, rank: tensor.RankSpec,
               implementation: str = "auto", dtype=None,
               param_dtype=jnp.float32, precision=None,
               conv_general_dilated=None,
               rngs: nnx.Rngs):
    name = f"CPConv({in_features}->{out_features})"
    _conv.configure(self, name, in_features, out_features, kernel_size,
                    strides, padding, kernel_dilation)
    self.implementation = functional.check_implementation(implementation, name)
    shape = self.kernel_size + (in_features, out_features)
    self.rank = tensor.cp_rank(shape, rank, layer=name)
    self.dtype = dtype
    self.precision = precision
    self.conv_general_dilated = conv_general_dilated

    factors = _init.cp_factors(rngs.params(), shape, self.rank,
                               math.prod(self.kernel_size) * in_features,
                               param_dtype)
    self.spatial_factors = nnx.List([nnx.Param(f) for f in factors[:-2]])
    self.in_factor = nnx.Param(factors[-2])
    self.out_factor = nnx.Param(factors[-1])
    self.bias = (nnx.Param(jnp.zeros((out_features,), param_dtype))
                 if use_bias else None)

  def factors(self) -> list[jax.Array]:
    """The CP factor matrices in kernel-mode order (*spatial, Cin, Cout)."""
    return ([f[...] for f in self.spatial_factors]
            + [self.in_factor[...], self.out_factor[...]])

  def kernel_tensor(self) -> jax.Array:
    """The dense kernel this layer represents, (*kernel_size, Cin, Cout)."""
    return tensor.cp_to_tensor(self.factors())

  def flops(self, input_shape: Sequence[int]) -> dict[str, int]:
    """Multiply-adds of each implementation for an input (N, *spatial, Cin),
    and the entries of the factorized path's intermediates
    (`cpac_jax.functional.cp_conv_flops`)."""
    return functional.cp_conv_flops(input_shape, self.out_features,
                                    self.rank, _conv.geometry(self),
                                    self.conv_general_dilated)

  def __call__(self, x: jax.Array) -> jax.Array:
    """(N, *spatial, Cin) -> (N, *spatial', Cout); extra leading batch axes
    are kept."""
    name = f"CPConv({self.in_features}->{self.out_features})"
    x, batch_shape = _conv.flatten_batch(x, len(self.kernel_size),
                                         self.in_features, name)
    bias = self.bias[...] if self.bias is not None else None
    x, bias, *factors = dtypes.promote_dtype(
        (x, bias, *self.factors()), dtype=self.dtype)
    y = functional.cp_conv(x, factors, _conv.geometry(self),
                           implementation=self.implementation,
                           precision=self.precision,
                           conv_general_dilated=self.conv_general_dilated)
    if bias is not None:
      y = y + bias
    return jnp.reshape(y, batch_shape + y.shape[1:])

  @classmethod
  def from_conv(cls, conv: nnx.Conv, rank: tensor.RankSpec, *,
                n_iter_max: int = 200, tol: float = 1e-8,
                key: jax.Array | None = None, implementation: str = "auto",
                rngs: nnx.Rngs | None = None) -> "CPConv":
    """A CPConv initialised from a trained `nnx.Conv` by CP-ALS of its kernel.

    Takes the conv's strides, padding, dilation, bias and dtypes; each factor
    gets weights^(1/M) of the decomposition's weights. Grouped convs and
    input dilation are not supported.
    """
    kwargs = _conv.from_conv_kwargs(conv, "CPConv.from_conv")
    layer = cls(**kwargs, rank=rank, implementation=implementation,
                rngs=rngs or nnx.Rngs(0))
    kernel = _conv.effective_kernel(conv).astype(jnp.float32)
    cp = tensor.cp_als(kernel, layer.rank, n_iter_max=n_iter_max, tol=tol,
                       key=key)
    scale = cp.weights ** (1 / kernel.ndim)
    factors = [(f * scale).astype(conv.param_dtype) for f in cp.factors]
    _conv.assign(layer, factors, conv.bias)
    return layer
