"""Where `patches_conv` and `winograd_conv` beat XLA's conv: the
measurement behind `cpac_jax.functional.conv.conv_lowering`
(`PATCHES_BELOW_CHANNELS`, inputs smaller than the kernel,
`WINOGRAD_FROM_CHANNELS`, `WINOGRAD_FROM_TILES`).

  python -m cpac_jax.benchmarks.lowering [--repeats=15]

A dense 3x3 conv c -> c (SAME padding), batch 32, on 32x32 and on 16x16
for c from 2 to 64 (and 128, 256), on 8x8 for c from 64 to 512, and on
maps smaller than the kernel or just above it (4x4, 3x3, 2x2, 1x1) for c
from 16 to 512: forward+backward (the gradient of sum(y^2) with respect to
the input and the kernel, as inside a factorized layer, whose core conv's
input depends on the parameters) through `lax.conv_general_dilated`,
`patches_conv` and `winograd_conv`, compiled
as cpac_jax's training compiles its steps (`process.compiler_options`:
without XLA's YNNPACK fusions on the CPU); and,
beside them, XLA's conv compiled with those fusions, as a plain `jax.jit`
compiles it; timed by the harness's protocol (`harness.measure`), in a
process whose malloc keeps freed blocks for the next call
(`process.reuse_host_memory`, as cpac_jax's command lines run). Writes
experiments/benchmarks/lowering.{md,json}.
"""

import sys

import jax
import jax.numpy as jnp
from jax import lax

import cpac_jax as cj
from cpac_jax.benchmarks import harness
from cpac_jax.functional.conv import (
  PATCHES_BELOW_CHANNELS,
  WINOGRAD_FROM_CHANNELS,
  WINOGRAD_FROM_TILES,
  conv,
  conv_lowering,
  patches_conv,
  winograd_conv,
)

NAME, REPEATS, PACKAGES = "lowering", 15, ()
# (spatial size, input channels): the channel sweep, then small maps.
SHAPES = ([(size, c) for size in (32, 16)
           for c in (2, 4, 6, 8, 12, 16, 24, 32, 64, 128)]
          + [(16, 256)] + [(8, c) for c in (24, 32, 64, 128, 256, 512)]
          + [(size, c) for size in (4, 3, 2, 1) for c in (16, 64, 256, 512)])
BATCH = 32
YNN = "XLA conv, YNNPACK fusions"
LOWERINGS = {"XLA conv": (lax.conv_general_dilated, False),
             "patches_conv": (patches_conv, False),
             "winograd_conv": (winograd_conv, False),
             YNN: (lax.conv_general_dilated, True)}
NAMES = {lax.conv_general_dilated: "XLA conv", patches_conv: "patches_conv",
         winograd_conv: "winograd_conv"}


def _variant(name, lowering, ynn_fusions, channels, size):
  def build():
    x = jax.random.normal(jax.random.key(0), (BATCH, size, size, channels))
    kernel = jax.random.normal(jax.random.key(1),
                               (3, 3, channels, channels))
    grad = jax.jit(jax.grad(lambda k, x: jnp.sum(conv(
        x, k, (1, 1), [(1, 1), (1, 1)], (1, 1),
        conv_general_dilated=lowering) ** 2), argnums=(0, 1)),
        compiler_options=cj.process.compiler_options(ynn_fusions))
    return {"backward": lambda: jax.block_until_ready(grad(kernel, x))}

  return harness.Variant({"lowering": name}, build)


def rows(repeats: int) -> list[dict]:
  rows = []
  for size, channels in SHAPES:
    measured = harness.measure(
        [_variant(name, *variant, channels, size)
         for name, variant in LOWERINGS.items()], repeats)
    chosen = conv_lowering(channels, (size, size), (3, 3), batch=BATCH)
    rows.append({"size": size, "channels": channels,
                 **{r["lowering"]: r["backward_ms"] for r in measured},
                 "conv_lowering": NAMES[chosen]})
  return rows


def render(run: dict) -> str:
  """lowering.md from a run (as lowering.json holds it)."""
  meta = run["meta"]
  lines = ["# patches_conv and winograd_conv against XLA's conv", "",
           f"{harness.describe(meta)} A 3x3 conv c -> c, batch {BATCH}, "
           "forward+backward (gradients for input and kernel), "
           "freed blocks kept for the next call "
           "(`process.reuse_host_memory`); compiled without XLA's YNNPACK "
           "fusions "
           "(`process.compiler_options`), the last two columns with them (a "
           "plain `jax.jit`). On the CPU `conv_lowering` takes patches_conv "
           f"below {PATCHES_BELOW_CHANNELS} input channels and for an input "
           "smaller than the kernel, winograd_conv for 3x3 unit-stride convs "
           f"from {WINOGRAD_FROM_CHANNELS} input channels and "
           f"{WINOGRAD_FROM_TILES} 4x4 output tiles over the batch, XLA's "
           "conv otherwise: the last column.", "",
           "| spatial | channels | XLA conv ms | patches_conv ms | "
           "patches / XLA | winograd_conv ms | winograd / XLA | "
           "XLA conv with YNNPACK fusions ms | with / without | "
           "conv_lowering |", "|---|---|---|---|---|---|---|---|---|---|"]
  for r in run["rows"]:
    xla = r["XLA conv"]
    lines.append(
        f"| {r['size']}x{r['size']} | {r['channels']} | {xla:.2f} "
        f"| {r['patches_conv']:.2f} | {r['patches_conv'] / xla:.2f}x "
        f"| {r['winograd_conv']:.2f} | {r['winograd_conv'] / xla:.2f}x "
        f"| {r[YNN]:.2f} | {r[YNN] / xla:.2f}x | {r['conv_lowering']} |")
  return "\n".join(lines) + "\n"


def summary(run: dict) -> str:
  """The run's headline figures, for the benchmarks' README."""
  rows = run["rows"]
  fastest = sum(r["conv_lowering"] == min(NAMES.values(), key=lambda n,
                                          r=r: r[n]) for r in rows)
  lines = [f"- `conv_lowering` picked the fastest of XLA's conv, "
           f"patches_conv and winograd_conv (forward+backward, without "
           f"YNNPACK fusions) at {fastest} of {len(rows)} shapes."]
  for name in ("patches_conv", "winograd_conv"):
    ratios = [r[name] / r["XLA conv"] for r in rows
              if r["conv_lowering"] == name]
    if ratios:
      lines.append(f"- Where it picks {name}: {min(ratios):.2f}x-"
                   f"{max(ratios):.2f}x XLA's conv's time "
                   f"({len(ratios)} shapes).")
  ynn = [r[YNN] / r["XLA conv"] for r in rows]
  lines.append(f"- XLA's conv with YNNPACK fusions: {min(ynn):.2f}x-"
               f"{max(ynn):.2f}x its time without them.")
  return "\n".join(lines)

if __name__ == "__main__":
  harness.main(sys.modules[__name__])
