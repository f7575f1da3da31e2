"""Multiply-adds of the 2x layers of scripts/bench_peers.py against the
fastest dense of their shape: which 2x targets no path can meet.

  python scripts/count_2x_macs.py

For each 2x layer (rank fraction 0.5) of the peer benchmark's shapes: the
forward multiply-adds of its factorized path and of its reconstructed path
(the rebuild plus the dense op), from the layer's own `flops`, each
relative to the dense op as the fastest dense runs it: a conv that
`conv_lowering` sends to `winograd_conv` counted as F(4x4, 3x3) does it,
36 products per 4x4 output tile and channel pair (transforms left out),
else as a direct conv; the 784 -> 300 matmul as a matmul. A path above
1.1x cannot come within 1.1x of that dense's time unless its products run
faster than the dense op's. Counts only: no timing, the same on any
machine. Writes experiments/benchmarks/macs_2x.md.
"""

import math
from pathlib import Path

from absl import app
from flax import nnx

from cpac_jax import layers
from cpac_jax.functional.conv import (
  conv_lowering,
  dense_conv_flops,
  winograd_conv,
)

OUT = Path(__file__).resolve().parents[1] / "experiments/benchmarks"
FRACTION = 0.5
CONVS = [(64, 32), (256, 16)]  # (channels, map size), batch 32
BATCH, TILE = 32, 4


def _conv_dense(channels: int, size: int) -> tuple[str, int]:
  """The fastest dense conv's name and multiply-adds, forward."""
  if conv_lowering(channels, (size, size), (3, 3), batch=BATCH) is (
      winograd_conv):
    tiles = BATCH * math.ceil(size / TILE) ** 2
    return "winograd_conv", tiles * 36 * channels * channels
  return "direct conv", dense_conv_flops(BATCH, (size, size), (3, 3),
                                         channels, channels)


def _rows():
  rngs = nnx.Rngs(0)
  for channels, size in CONVS:
    dense_name, dense = _conv_dense(channels, size)
    shape = (BATCH, size, size, channels)
    for name, layer in (("CP", layers.CPConv), ("Tucker", layers.TuckerConv),
                        ("TT", layers.TTConv)):
      flops = layer(channels, channels, (3, 3), rank=FRACTION,
                    rngs=rngs).flops(shape)
      yield (f"conv 3x3 {channels}->{channels} on {size}x{size}, batch "
             f"{BATCH}", name, dense_name, dense, flops)
  shape, dense = (128, 784), 128 * 784 * 300
  for name, layer in (
      ("Tucker", layers.TuckerDense((28, 28), (300,), rank=FRACTION,
                                    rngs=rngs)),
      ("TT", layers.TTDense((4, 7, 4, 7), (3, 4, 5, 5), rank=FRACTION,
                            rngs=rngs))):
    yield ("TTL dense 784->300, batch 128", name, "matmul", dense,
           layer.flops(shape))


def main(argv):
  del argv
  lines = ["# 2x layers: multiply-adds against the fastest dense", "",
           "`python scripts/count_2x_macs.py`: forward multiply-adds of each "
           "path of the peer benchmark's 2x layers (rank fraction 0.5), "
           "from the layers' `flops`, relative to the dense op as the "
           "fastest dense of the shape computes it (`winograd_conv`: 36 "
           "products per 4x4 output tile and channel pair, transforms left "
           "out). Above 1.1x, a path cannot meet the 2x target (within 1.1x "
           "of the fastest dense's time) unless its products run faster "
           "than the dense op's.", "",
           "| shape | layer | fastest dense | dense M | factorized / dense | "
           "reconstructed / dense | rebuild / dense | best path / dense |",
           "|---|---|---|---:|---:|---:|---:|---:|"]
  for shape, name, dense_name, dense, flops in _rows():
    rebuild = flops["reconstructed"] - flops["dense"]
    factorized, reconstructed = (flops["factorized"] / dense,
                                 (dense + rebuild) / dense)
    lines.append(
        f"| {shape} | {name} | {dense_name} | {dense / 1e6:,.0f} | "
        f"{factorized:.2f}x | {reconstructed:.2f}x | {rebuild / dense:.2f}x "
        f"| {min(factorized, reconstructed):.2f}x |")
  OUT.mkdir(parents=True, exist_ok=True)
  (OUT / "macs_2x.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
