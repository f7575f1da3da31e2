"""`TuckerConv`: a convolution whose kernel is held in Tucker form."""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes

from cpac_jax import functional, tensor
from cpac_jax.layers import _conv, _empty, _init

__all__ = ["TuckerConv"]


class TuckerConv(nnx.Module):
  """Convolution whose kernel is held in Tucker form.

  By default Tucker-2 over the channel modes: the kernel (*kernel_size, Cin,
  Cout) is core x_Cin U_in x_Cout U_out with a core (*kernel_size, r_in,
  r_out), and the factorized forward is a 1x1 conv to r_in channels, a small
  dense conv r_in -> r_out, and a 1x1 conv to Cout. With
  `factorize_spatial=True` every mode is factorized (full Tucker); the
  factorized forward then rebuilds only the small (*kernel_size, r_in, r_out)
  kernel from the core and spatial factors, never the Cin x Cout one.

  Initialisation: factors have orthonormal columns, which keep the norm, and
  the core is a random direction scaled so the kernel entries have mean
  square v = 1 / (prod(kernel_size) * Cin), the variance of Flax's default
  `lecun_normal`, whatever the rank.

  The computation is `cpac_jax.functional.tucker_conv`; this class holds the
  parameters.

  Args:
    in_features, out_features, kernel_size, strides, padding,
    kernel_dilation, use_bias, dtype, param_dtype, precision,
      conv_general_dilated: as `nnx.Conv` (the last may be
      `cpac_jax.layers.patches_conv`; None, the default, picks per conv:
      see `cpac_jax.functional.conv.conv_lowering`).
    rank: an int (every factorized mode), a tuple with one rank per factorized
      mode in kernel order ((r_in, r_out), or (*spatial ranks, r_in, r_out)
      with `factorize_spatial`), a float in (0, 1], or 'same'.
    factorize_spatial: also factorize the spatial modes (full Tucker).
    implementation: 'auto', 'factorized' or 'reconstructed'.
    rngs: random streams for initialisation.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from cpac_jax.layers import TuckerConv
    >>> conv = TuckerConv(64, 64, kernel_size=(3, 3), rank=(16, 16),
    ...                   rngs=nnx.Rngs(0))
    >>> conv(jnp.ones((2, 8, 8, 64))).shape
    (2, 8, 8, 64)
  """

  def __init__(self, in_features: int, out_features: int,
               kernel_size: int | Sequence[int],
               strides: int | Sequence[int] = 1, *,
               padding: _conv.Padding = "SAME",
               kernel_dilation: int | Sequence[int] = 1,
               use_bias: bool = True, rank: tensor.RankSpec,
               factorize_spatial: bool = False, implementation: str = "auto",
               dtype=None, param_dtype=jnp.float32, precision=None,
               conv_general_dilated=None,
               rngs: nnx.Rngs):
    name = f"TuckerConv({in_features}->{out_features})"
    _conv.configure(self, name, in_features, out_features, kernel_size,
                    strides, padding, kernel_dilation)
    num_spatial = len(self.kernel_size)
    self.implementation = functional.check_implementation(implementation, name)
    self.factorize_spatial = factorize_spatial
    self.dtype = dtype
    self.precision = precision
    self.conv_general_dilated = conv_general_dilated
    shape = self.kernel_size + (in_features, out_features)
    self.modes = functional.tucker_conv_modes(num_spatial, factorize_spatial)
    self.rank = tensor.tucker_rank(shape, rank, self.modes, layer=name)

    core, factors = _init.tucker(rngs.params(), shape, self.rank, self.modes,
                                 math.prod(self.kernel_size) * in_features,
                                 param_dtype)
    self.core = nnx.Param(core)
    self.spatial_factors = nnx.List([nnx.Param(f) for f in factors[:-2]])
    self.in_factor = nnx.Param(factors[-2])
    self.out_factor = nnx.Param(factors[-1])
    self.bias = (nnx.Param(jnp.zeros((out_features,), param_dtype))
                 if use_bias else None)

  def factors(self) -> list[jax.Array]:
    """The factor matrices, in the order of `self.modes`."""
    return ([f[...] for f in self.spatial_factors]
            + [self.in_factor[...], self.out_factor[...]])

  def kernel_tensor(self) -> jax.Array:
    """The dense kernel this layer represents, (*kernel_size, Cin, Cout)."""
    return tensor.multi_mode_dot(self.core[...], self.factors(), self.modes)

  def flops(self, input_shape: Sequence[int]) -> dict[str, int]:
    """Multiply-adds of each implementation for an input (N, *spatial, Cin),
    and the entries of the factorized path's intermediates
    (`cpac_jax.functional.tucker_conv_flops`)."""
    return functional.tucker_conv_flops(input_shape, self.out_features,
                                        self.rank, _conv.geometry(self),
                                        self.conv_general_dilated)

  def __call__(self, x: jax.Array) -> jax.Array:
    """(N, *spatial, Cin) -> (N, *spatial', Cout); extra leading batch axes
    are kept."""
    name = f"TuckerConv({self.in_features}->{self.out_features})"
    given = x
    x, batch_shape = _conv.flatten_batch(x, len(self.kernel_size),
                                         self.in_features, name)
    if not math.prod(batch_shape):
      return _empty.empty_batch(self, given, len(batch_shape))
    bias = self.bias[...] if self.bias is not None else None
    x, bias, core, *factors = dtypes.promote_dtype(
        (x, bias, self.core[...], *self.factors()), dtype=self.dtype)
    y = functional.tucker_conv(x, core, factors, _conv.geometry(self),
                               implementation=self.implementation,
                               precision=self.precision,
                               conv_general_dilated=self.conv_general_dilated)
    if bias is not None:
      y = y + bias
    return jnp.reshape(y, batch_shape + y.shape[1:])

  @classmethod
  def from_conv(cls, conv: nnx.Conv, rank: tensor.RankSpec, *,
                factorize_spatial: bool = False, method: str = "hooi",
                implementation: str = "auto",
                rngs: nnx.Rngs | None = None) -> "TuckerConv":
    """A TuckerConv initialised from a trained `nnx.Conv` by a (partial)
    Tucker decomposition (HOOI by default) of its kernel."""
    kwargs = _conv.from_conv_kwargs(conv, "TuckerConv.from_conv")
    layer = cls(**kwargs, rank=rank, factorize_spatial=factorize_spatial,
                implementation=implementation, rngs=rngs or nnx.Rngs(0))
    kernel = _conv.effective_kernel(conv).astype(jnp.float32)
    core, factors = tensor.tucker(kernel, layer.rank, layer.modes,
                                  method=method)
    layer.core[...] = core.astype(conv.param_dtype)
    factors = [f.astype(conv.param_dtype) for f in factors]
    _conv.assign(layer, factors, conv.bias)
    return layer
