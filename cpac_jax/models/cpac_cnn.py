"""The CPAC-CNN nets of the CPAC-Conv paper's official code."""

import jax
import jax.numpy as jnp
from flax import nnx

from cpac_jax.layers import CPConv, TTConv, TuckerConv, patches_conv
from cpac_jax.models import official_init
from cpac_jax.models.cnn import max_pool_2x2
from cpac_jax.tensor import RankSpec

__all__ = ["CPACNet", "INITS"]

INITS = ("default", "official")
_LAYERS = {"cp": CPConv, "tucker": TuckerConv, "tt": TTConv, "dense": None}


def _batch1_conv(*args, **kwargs) -> jax.Array:
  """`patches_conv` on the CPU, XLA's conv on an accelerator (its
  lowerings are tuned for the CPU), chosen when the conv is traced."""
  conv = (patches_conv if jax.default_backend() == "cpu"
          else jax.lax.conv_general_dilated)
  return conv(*args, **kwargs)


class CPACNet(nnx.Module):
  """One or two CP (or dense) 3x3 convs, then one or two dense layers.

  As in the official code: each conv has `num_filters` outputs, stride 1, no
  padding and no bias, and is followed by 2x2 max-pooling and ReLU. The
  two-layer net ends in FC(flat -> 50) -> FC(50 -> classes) with no
  activation between them; the one-layer net in FC(flat -> classes). For
  28x28 MNIST, flat is 200 (two layers) or 1352 (one layer).

  Built for batch size 1, where these tiny layers cost more in dispatch
  and memory layout than in arithmetic: the convs (the factorized kernel
  rebuilt, or the dense one) run on the CPU as `patches_conv`, one matmul
  over the taps (XLA's conv on an accelerator), and the pooling as a max
  over a reshape, whose gradient is an elementwise select rather than
  XLA's scatter; both compute what `nnx.Conv` and `nnx.max_pool` do (the
  pooling's gradient differs only at tied maxima).

  Args:
    num_layers: 1 or 2 conv layers.
    factorization: "cp" (CPConv, the paper's), "tucker" (TuckerConv),
      "tt" (TTConv) or "dense" (nnx.Conv).
    rank: rank spec of every factorized conv (ignored for dense).
    factorize_first: False keeps the first conv dense (1 -> 8 on MNIST:
      72 weights, which even rank 1 shrinks only 4.8x), so that a budget
      falls on the second conv alone; the shoot-out's setting.
    input_shape: (H, W, C) of one example.
    num_classes: outputs.
    num_filters, kernel_size: conv outputs and spatial size.
    implementation: the factorized convs' forward path.
    init: "default" (CP factors and dense layers as cpac_jax and Flax
      initialise them) or "official" (as the official code does: CP factors
      by TensorLy 0.4's CP-ALS of a random kernel, PyTorch's uniform
      defaults elsewhere; `cpac_jax.models.official_init`).
    init_seed: with init "official", seed s draws the kernels from numpy's
      RandomState(48 + s); 0 draws the official code's.
    factor_dtype: dtype of the CP factors and so of their optimizer state
      ("float32", or "float64" as the official code holds them, which needs
      JAX's 64-bit mode: JAX_ENABLE_X64=1); the convs compute in float32
      (or `dtype`) either way, as the official code's forward casts its
      factors. Other layers (dense convs, FC) hold float32 whatever it
      says; Tucker and TT factors take "float32" only.
    dtype: every layer's compute dtype (e.g. jnp.bfloat16; None: as the
      inputs and parameters promote); the parameters keep their own
      dtypes whatever it is, and the logits come out in it.
    rngs: random streams.

  Example:
    >>> from flax import nnx
    >>> net = CPACNet(num_layers=2, factorization="cp", rank=5,
    ...               input_shape=(28, 28, 1), num_classes=10,
    ...               rngs=nnx.Rngs(0))
    >>> net(jnp.zeros((3, 28, 28, 1))).shape
    (3, 10)
  """

  def __init__(self, *, num_layers: int = 2, factorization: str = "cp",
               rank: RankSpec = 5, input_shape=(28, 28, 1),
               num_classes: int = 10, num_filters: int = 8,
               kernel_size: int = 3, implementation: str = "auto",
               factorize_first: bool = True, init: str = "default",
               init_seed: int = 0, factor_dtype: str = "float32",
               dtype=None, rngs: nnx.Rngs):
    if num_layers not in (1, 2):
      raise ValueError(f"CPACNet: num_layers must be 1 or 2, got {num_layers}")
    if factorization not in _LAYERS:
      raise ValueError(
          f"CPACNet: factorization must be one of {tuple(_LAYERS)}, got "
          f"{factorization!r}")
    if init not in INITS:
      raise ValueError(f"CPACNet: init must be one of {INITS}, got {init!r}")
    if init == "official" and factorization in ("tucker", "tt"):
      raise ValueError(
          "CPACNet: init 'official' is the official code's, which has CP "
          f"and dense convs only; factorization {factorization!r} takes "
          "init 'default'")
    if factor_dtype not in ("float32", "float64"):
      raise ValueError("CPACNet: factor_dtype must be 'float32' or 'float64', "
                       f"got {factor_dtype!r}")
    if factor_dtype == "float64" and factorization in ("tucker", "tt"):
      raise ValueError(
          "CPACNet: factor_dtype 'float64' holds CP factors (as the official "
          f"code does); factorization {factorization!r} takes 'float32'")
    if factor_dtype == "float64" and not jax.config.read("jax_enable_x64"):
      raise ValueError("CPACNet: factor_dtype 'float64' needs JAX's 64-bit "
                       "mode; run with JAX_ENABLE_X64=1 in the environment")
    height, width, channels = input_shape
    convs = []
    for index in range(num_layers):
      kwargs = dict(padding="VALID", use_bias=False, dtype=dtype,
                    conv_general_dilated=_batch1_conv, rngs=rngs)
      layer = _LAYERS[factorization] if index or factorize_first else None
      if layer is CPConv and factor_dtype != "float32":
        kwargs.update(param_dtype=jnp.dtype(factor_dtype),
                      dtype=jnp.float32 if dtype is None else dtype)
      if layer:
        conv = layer(channels, num_filters, (kernel_size, kernel_size),
                     rank=rank, implementation=implementation, **kwargs)
      else:
        conv = nnx.Conv(channels, num_filters, (kernel_size, kernel_size),
                        **kwargs)
      convs.append(conv)
      height = (height - kernel_size + 1) // 2
      width = (width - kernel_size + 1) // 2
      channels = num_filters
    self.convs = nnx.List(convs)
    flat = height * width * channels
    if num_layers == 2:
      self.fcs = nnx.List([
          nnx.Linear(flat, 50, dtype=dtype, rngs=rngs),
          nnx.Linear(50, num_classes, dtype=dtype, rngs=rngs)])
    else:
      self.fcs = nnx.List([nnx.Linear(flat, num_classes, dtype=dtype,
                                      rngs=rngs)])
    if init == "official":
      self._official_init(init_seed, rngs)

  def _official_init(self, seed: int, rngs: nnx.Rngs) -> None:
    """Redraw every parameter as the official code does (module doc of
    `cpac_jax.models.official_init`)."""
    cp = [conv for conv in self.convs if isinstance(conv, CPConv)]
    shapes = [(c.out_features, *c.kernel_size, c.in_features) for c in cp]
    for conv, factors in zip(cp, official_init.kernels(
        shapes, [c.rank for c in cp], seed)):
      params = [*conv.spatial_factors, conv.in_factor, conv.out_factor]
      for param, factor in zip(params, factors, strict=True):
        param[...] = jnp.asarray(factor, param[...].dtype)
    for layer in [c for c in self.convs if not isinstance(c, CPConv)] + list(
        self.fcs):
      kernel = layer.kernel[...]
      fan_in = kernel.size // kernel.shape[-1]
      layer.kernel[...] = official_init.torch_uniform(
          rngs.params(), kernel.shape, fan_in, kernel.dtype)
      if layer.bias is not None:
        layer.bias[...] = official_init.torch_uniform(
            rngs.params(), layer.bias.shape, fan_in, kernel.dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    """(N, H, W, C) -> logits (N, classes)."""
    for conv in self.convs:
      x = nnx.relu(max_pool_2x2(conv(x)))
    x = jnp.reshape(x, (x.shape[0], -1))
    for fc in self.fcs:
      x = fc(x)
    return x
