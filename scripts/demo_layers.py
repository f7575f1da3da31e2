"""A tour of the factorized layers: sizes, speed-ups in multiply-adds, and
compressing a dense layer by decomposing its kernel.

  python scripts/demo_layers.py
"""

import jax
import jax.numpy as jnp
from flax import nnx

import cpac_jax as cj


def main():
  rngs = nnx.Rngs(0)
  dense = nnx.Linear(784, 300, use_bias=False, rngs=rngs)
  ttl = cj.layers.TuckerDense(in_shape=(28, 28), out_shape=(300,),
                              rank=(5, 5, 10), use_bias=False, rngs=rngs)
  print(f"TTL 784->300 at ranks (5, 5, 10): {cj.count_params(ttl):,} "
        f"parameters vs {cj.count_params(dense):,} dense "
        f"({cj.count_params(dense) / cj.count_params(ttl):.2f}x fewer); "
        f"multiply-adds for a batch of 128: {ttl.flops((128, 784))}")

  conv = nnx.Conv(64, 64, (3, 3), use_bias=False, rngs=rngs)
  for rank in (4, 16, 64):
    cp = cj.layers.CPConv.from_conv(conv, rank=rank)
    error = jnp.linalg.norm(cp.kernel_tensor() - conv.kernel[...])
    error /= jnp.linalg.norm(conv.kernel[...])
    x = jax.random.normal(jax.random.key(0), (8, 32, 32, 64))
    print(f"CPConv 64->64 3x3 rank {rank:2d}: {cj.count_params(cp):,} "
          f"parameters vs {cj.count_params(conv):,}, kernel error of "
          f"from_conv {float(error):.3f} (a random kernel is far from low "
          f"rank), output {cp(x).shape}")


if __name__ == "__main__":
  main()
