"""`TTConv`: a convolution whose kernel is held as a tensor train."""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes

from cpac_jax import functional, tensor
from cpac_jax.layers import _conv, _empty, _init

__all__ = ["TTConv"]


class TTConv(nnx.Module):
  """Convolution whose kernel is held as a tensor train (TT).

  The train runs over the kernel's modes in the order (Cin, *kernel_size,
  Cout): cores G_in (1, Cin, r_1), one (r_i, k_i, r_{i+1}) per spatial axis,
  G_out (r_d, Cout, 1), so the factorized forward is a chain: a 1x1 conv to
  r_1 channels, a 1-D conv r_i -> r_{i+1} along each spatial axis, and a
  1x1 conv to Cout; the dense kernel is never formed. `"reconstructed"`
  rebuilds the kernel and runs one dense conv; `"auto"` (the default) picks
  the cheaper, as `CPConv` does. TensorLy-Torch orders its TT conv kernel
  (Cout, Cin, *kernel_size) instead; the rank specs mean the same.

  Initialisation: every core a random direction of fixed mean square, so
  the kernel entries have mean square v = 1 / (prod(kernel_size) * Cin),
  the variance of Flax's default `lecun_normal`, whatever the rank.

  The computation is `cpac_jax.functional.tt_conv`; this class holds the
  parameters.

  Args:
    in_features, out_features, kernel_size, strides, padding,
    kernel_dilation, use_bias, dtype, param_dtype, precision,
      conv_general_dilated: as `nnx.Conv` (the last may be
      `cpac_jax.layers.patches_conv`; None, the default, picks per conv:
      see `cpac_jax.functional.conv.conv_lowering`).
    rank: an int (every TT rank, up to the largest each bond can need), the
      d - 1 inner TT ranks (or d + 1 with the boundary 1s), a float in
      (0, 1] or 'same' (`cpac_jax.tensor.tt_rank`).
    implementation: 'auto', 'factorized' or 'reconstructed'.
    rngs: random streams for initialisation.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from cpac_jax.layers import TTConv
    >>> conv = TTConv(64, 64, kernel_size=(3, 3), rank=8, rngs=nnx.Rngs(0))
    >>> conv.rank
    (1, 8, 8, 8, 1)
    >>> conv(jnp.ones((2, 8, 8, 64))).shape
    (2, 8, 8, 64)
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
    name = f"TTConv({in_features}->{out_features})"
    _conv.configure(self, name, in_features, out_features, kernel_size,
                    strides, padding, kernel_dilation)
    self.implementation = functional.check_implementation(implementation, name)
    self.dtype = dtype
    self.precision = precision
    self.conv_general_dilated = conv_general_dilated
    shape = (in_features, *self.kernel_size, out_features)
    self.rank = tensor.tt_rank(shape, rank, layer=name)
    core_shapes = [(self.rank[k], size, self.rank[k + 1])
                   for k, size in enumerate(shape)]
    cores = _init.tt_cores(rngs.params(), core_shapes,
                           math.prod(self.kernel_size) * in_features,
                           param_dtype)
    self.cores = nnx.List([nnx.Param(core) for core in cores])
    self.bias = (nnx.Param(jnp.zeros((out_features,), param_dtype))
                 if use_bias else None)

  def kernel_tensor(self) -> jax.Array:
    """The dense kernel this layer represents, (*kernel_size, Cin, Cout)."""
    return functional.tt_conv_kernel([core[...] for core in self.cores])

  def flops(self, input_shape: Sequence[int]) -> dict[str, int]:
    """Multiply-adds of each implementation for an input (N, *spatial, Cin),
    and the entries of the factorized path's intermediates
    (`cpac_jax.functional.tt_conv_flops`)."""
    return functional.tt_conv_flops(input_shape, self.out_features,
                                    self.rank, _conv.geometry(self),
                                    self.conv_general_dilated)

  def __call__(self, x: jax.Array) -> jax.Array:
    """(N, *spatial, Cin) -> (N, *spatial', Cout); extra leading batch axes
    are kept."""
    name = f"TTConv({self.in_features}->{self.out_features})"
    given = x
    x, batch_shape = _conv.flatten_batch(x, len(self.kernel_size),
                                         self.in_features, name)
    if not math.prod(batch_shape):
      return _empty.empty_batch(self, given, len(batch_shape))
    bias = self.bias[...] if self.bias is not None else None
    x, bias, *cores = dtypes.promote_dtype(
        (x, bias, *[core[...] for core in self.cores]), dtype=self.dtype)
    y = functional.tt_conv(x, cores, _conv.geometry(self),
                           implementation=self.implementation,
                           precision=self.precision,
                           conv_general_dilated=self.conv_general_dilated)
    if bias is not None:
      y = y + bias
    return jnp.reshape(y, batch_shape + y.shape[1:])

  @classmethod
  def from_conv(cls, conv: nnx.Conv, rank: tensor.RankSpec, *,
                implementation: str = "auto",
                rngs: nnx.Rngs | None = None) -> "TTConv":
    """A TTConv initialised from a trained `nnx.Conv` by TT-SVD
    (`cpac_jax.tensor.tt_svd`) of its kernel, taken in the order (Cin,
    *kernel_size, Cout). Grouped convs and input dilation are not supported.
    """
    kwargs = _conv.from_conv_kwargs(conv, "TTConv.from_conv")
    layer = cls(**kwargs, rank=rank, implementation=implementation,
                rngs=rngs or nnx.Rngs(0))
    kernel = _conv.effective_kernel(conv).astype(jnp.float32)
    d = kernel.ndim
    ordered = jnp.transpose(kernel, (d - 2,) + tuple(range(d - 2)) + (d - 1,))
    for param, core in zip(layer.cores, tensor.tt_svd(ordered, layer.rank)):
      param[...] = core.astype(conv.param_dtype)
    if conv.bias is not None:
      layer.bias[...] = conv.bias[...]
    return layer
