"""Multiply-adds of the peer benchmark's 2x layers against the
fastest dense of their shape: which 2x targets no path can meet.

  python -m cpac_jax.benchmarks.macs_2x

For each 2x layer (rank fraction 0.5) of the peer benchmark's shapes: the
forward multiply-adds of its factorized path and of its reconstructed path
(the rebuild plus the dense op), from the layer's own `flops`, each
relative to the dense op as the fastest dense runs it: a conv that
`conv_lowering` sends to `winograd_conv` counted as F(4x4, 3x3) does it,
36 products per 4x4 output tile and channel pair (transforms left out),
else as a direct conv; the 784 -> 300 matmul as a matmul. A path above
1.1x cannot come within 1.1x of that dense's time unless its products run
faster than the dense op's. Counts only: no timing, the same on any
machine. Writes experiments/benchmarks/macs_2x.{md,json}.
"""

import math
import sys

from flax import nnx

import cpac_jax as cj
from cpac_jax.benchmarks import harness
from cpac_jax.functional.conv import (
  conv_lowering,
  dense_conv_flops,
  winograd_conv,
)

NAME, REPEATS, PACKAGES = "macs_2x", 1, ()
PROTOCOL = "counts from the layers' `flops`, nothing timed"
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


def prepare() -> None:
  """Nothing: counts need no process tuning."""


def rows(repeats: int) -> list[dict]:
  del repeats  # nothing is timed
  rows = []
  for shape, name, dense_name, dense, flops in _layers():
    rebuild = flops["reconstructed"] - flops["dense"]
    rows.append({"shape": shape, "layer": name, "dense_name": dense_name,
                 "dense": dense, "factorized": flops["factorized"] / dense,
                 "reconstructed": (dense + rebuild) / dense,
                 "rebuild": rebuild / dense})
  return rows


def render(run: dict) -> str:
  """macs_2x.md from a run (as macs_2x.json holds it)."""
  lines = ["# 2x layers: multiply-adds against the fastest dense", "",
           f"{harness.describe(run['meta'])} Forward multiply-adds of each "
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
  for r in run["rows"]:
    lines.append(
        f"| {r['shape']} | {r['layer']} | {r['dense_name']} | "
        f"{r['dense'] / 1e6:,.0f} | {r['factorized']:.2f}x | "
        f"{r['reconstructed']:.2f}x | {r['rebuild']:.2f}x "
        f"| {min(r['factorized'], r['reconstructed']):.2f}x |")
  return "\n".join(lines) + "\n"


def _layers():
  rngs = nnx.Rngs(0)
  for channels, size in CONVS:
    dense_name, dense = _conv_dense(channels, size)
    shape = (BATCH, size, size, channels)
    for name, layer in (("CP", cj.layers.CPConv),
                        ("Tucker", cj.layers.TuckerConv),
                        ("TT", cj.layers.TTConv)):
      flops = layer(channels, channels, (3, 3), rank=FRACTION,
                    rngs=rngs).flops(shape)
      yield (f"conv 3x3 {channels}->{channels} on {size}x{size}, batch "
             f"{BATCH}", name, dense_name, dense, flops)
  shape, dense = (128, 784), 128 * 784 * 300
  for name, layer in (
      ("Tucker", cj.layers.TuckerDense((28, 28), (300,), rank=FRACTION,
                                    rngs=rngs)),
      ("TT", cj.layers.TTDense((4, 7, 4, 7), (3, 4, 5, 5), rank=FRACTION,
                            rngs=rngs))):
    yield ("TTL dense 784->300, batch 128", name, "matmul", dense,
           layer.flops(shape))


def summary(run: dict) -> str:
  """The run's headline figures, for the benchmarks' README."""
  out = [r for r in run["rows"] if min(r["factorized"], r["reconstructed"])
         > 1.1]
  return ("- 2x layers whose cheapest path needs over 1.1x the fastest "
          f"dense's multiply-adds: {len(out)} of {len(run['rows'])} ("
          + "; ".join(f"{r['shape']} {r['layer']}, "
                      f"{min(r['factorized'], r['reconstructed']):.2f}x"
                      for r in out) + ").")

if __name__ == "__main__":
  harness.main(sys.modules[__name__])
