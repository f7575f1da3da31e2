"""VGG-16 for 32x32 inputs (CIFAR-10): dense, TTL and CP variants."""

import jax
import jax.numpy as jnp
from flax import nnx

from cpac_jax.layers import CPConv, TuckerDense, auto_conv_general_dilated
from cpac_jax.models.cnn import apply_stages, conv_stages, max_pool_2x2
from cpac_jax.tensor import RankSpec

__all__ = ["VGG16"]

# Conv widths; "M" is a 2x2 max-pool.
_STAGES = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512,
           "M", 512, 512, 512, "M")


class VGG16(nnx.Module):
  """VGG-16 with batch norm for 32x32 images; 512-512-classes classifier.

  Variants (`factorization`):
    "dense": nnx.Conv and nnx.Linear throughout;
    "tucker": the TTL simplification: the two hidden classifier layers are
      TuckerDense on (8, 8, 8) -> (8, 8, 8) at `rank`;
    "cp": every conv but the first (3 input channels) is a CPConv at `rank`.

  `dtype` is every layer's compute dtype (e.g. jnp.bfloat16; None: as the
  inputs and float32 parameters promote), batch norm's included; the
  parameters are float32 whatever it is, and the logits come out in it.

  The dense convs run as each conv's shapes call for on the CPU
  (`auto_conv_general_dilated`): the last stage's 512 channels on 2x2
  through `patches_conv`, where XLA's conv is pathologically slow, those
  with 128 or 256 input channels on 16x16 and 8x8 maps through
  `winograd_conv` (from batch 8 on 16x16, 32 on 8x8). The
  pooling is `max_pool_2x2`, whose gradient is no scatter.

  Example:
    >>> from flax import nnx
    >>> net = VGG16(factorization="tucker", rank=4, rngs=nnx.Rngs(0))
    >>> [layer.weight_tensor().shape for layer in net.hidden]
    [(8, 8, 8, 8, 8, 8), (8, 8, 8, 8, 8, 8)]
  """

  def __init__(self, *, factorization: str = "dense", rank: RankSpec = 4,
               input_shape=(32, 32, 3), num_classes: int = 10,
               width: int = 512, implementation: str = "auto", dtype=None,
               rngs: nnx.Rngs):
    if factorization not in ("dense", "tucker", "cp"):
      raise ValueError(
          "VGG16: factorization must be 'dense', 'tucker' or 'cp', got "
          f"{factorization!r}")

    def make_conv(channels, out, index):
      if factorization == "cp" and index:
        return CPConv(channels, out, (3, 3), rank=rank,
                      implementation=implementation, dtype=dtype, rngs=rngs)
      return nnx.Conv(channels, out, (3, 3), dtype=dtype, rngs=rngs,
                      conv_general_dilated=auto_conv_general_dilated)

    self.convs, self.norms = conv_stages(_STAGES, input_shape[-1], make_conv,
                                         rngs, dtype)
    channels = self.convs[-1].out_features
    if factorization == "tucker":
      side = round(width ** (1 / 3))
      shape = (side,) * 3
      if side ** 3 != width or channels != width:
        raise ValueError(
            f"VGG16: TTL classifier needs a cube width, got width={width}")
      hidden = [TuckerDense(shape, shape, rank=rank,
                            implementation=implementation, dtype=dtype,
                            rngs=rngs)
                for _ in range(2)]
    else:
      hidden = [nnx.Linear(channels, width, dtype=dtype, rngs=rngs),
                nnx.Linear(width, width, dtype=dtype, rngs=rngs)]
    self.hidden = nnx.List(hidden)
    self.out = nnx.Linear(width, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """(N, 32, 32, 3) -> logits (N, classes)."""
    x = apply_stages(_STAGES, self.convs, self.norms, x, max_pool_2x2)
    x = jnp.reshape(x, (x.shape[0], -1))
    for layer in self.hidden:
      x = nnx.relu(layer(x))
    return self.out(x)
