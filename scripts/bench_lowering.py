"""Where `patches_conv` beats XLA's conv: the measurement behind
`cpac_jax.functional.conv.conv_lowering` (`PATCHES_BELOW_CHANNELS`, and
inputs smaller than the kernel).

  python scripts/bench_lowering.py [--repeats=15]

A dense 3x3 conv c -> c (SAME padding), batch 32, on 32x32 and on 16x16
for c from 2 to 64, and on maps smaller than the kernel or just above it
(4x4, 3x3, 2x2, 1x1) for c from 16 to 512: forward+backward (the gradient
of sum(y^2) with respect to the input and the kernel, as inside a
factorized layer, whose core conv's input depends on the parameters)
through `lax.conv_general_dilated` and through `patches_conv`, compiled
as cpac_jax's training compiles its steps (`train.compiler_options`:
without XLA's YNNPACK fusions on the CPU); and,
beside them, XLA's conv compiled with those fusions, as a plain `jax.jit`
compiles it. The median of `repeats` timed calls, the variants
interleaved, each timed call right after an untimed one of the same
variant. Writes experiments/benchmarks/lowering.{md,json}.
"""

import json
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import app, flags
from jax import lax

from cpac_jax import report, train
from cpac_jax.functional.conv import PATCHES_BELOW_CHANNELS, conv, patches_conv

_REPEATS = flags.DEFINE_integer("repeats", 15, "timed calls per variant")
_OUT = flags.DEFINE_string("out", "experiments/benchmarks",
                           "folder for lowering.{md,json}")
# (spatial size, input channels): the channel sweep, then small maps.
SHAPES = ([(size, c) for size in (32, 16)
           for c in (2, 4, 6, 8, 12, 16, 24, 32, 64)]
          + [(size, c) for size in (4, 3, 2, 1) for c in (16, 64, 256, 512)])
YNN = "XLA conv, YNNPACK fusions"
LOWERINGS = {"XLA conv": (lax.conv_general_dilated, False),
             "patches_conv": (patches_conv, False),
             YNN: (lax.conv_general_dilated, True)}


def _call(lowering, ynn_fusions, channels, size):
  x = jax.random.normal(jax.random.key(0), (32, size, size, channels))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, channels, channels))
  grad = jax.jit(jax.grad(lambda k, x: jnp.sum(conv(
      x, k, (1, 1), [(1, 1), (1, 1)], (1, 1),
      conv_general_dilated=lowering) ** 2), argnums=(0, 1)),
      compiler_options=train.compiler_options(ynn_fusions))
  jax.block_until_ready(grad(kernel, x))  # compile
  return lambda: jax.block_until_ready(grad(kernel, x))


def _median_ms(calls: dict) -> dict:
  samples = {name: [] for name in calls}
  for _ in range(_REPEATS.value):
    for name, fn in calls.items():
      fn()  # untimed: a call after another variant's runs cold
      start = time.perf_counter()
      fn()
      samples[name].append(time.perf_counter() - start)
  return {name: 1e3 * statistics.median(v) for name, v in samples.items()}


def main(argv):
  del argv
  rows = []
  for size, channels in SHAPES:
    ms = _median_ms({name: _call(*variant, channels, size)
                     for name, variant in LOWERINGS.items()})
    rows.append({"size": size, "channels": channels, **ms})
  device = f"{jax.devices()[0].device_kind} ({jax.default_backend()})"
  meta = {"device": device, "cpu": report.cpu_name(),
          "machine": platform.machine(), "repeats": _REPEATS.value,
          "jax": jax.__version__}
  out = Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  (out / "lowering.json").write_text(json.dumps({"meta": meta, "rows": rows},
                                                indent=1))
  lines = ["# patches_conv against XLA's conv, by input channels", "",
           f"`python scripts/bench_lowering.py --repeats={_REPEATS.value}` "
           f"on {device}, {meta['cpu']} ({meta['machine']}), jax "
           f"{jax.__version__}. A 3x3 conv c -> c, batch 32, forward+"
           "backward (gradients for input and kernel); medians of "
           f"{_REPEATS.value} interleaved calls, each after an untimed one "
           "of the same variant; compiled without XLA's YNNPACK fusions "
           "(`train.compiler_options`), the last two columns with them (a "
           "plain `jax.jit`). `conv_lowering` takes patches_conv on the "
           f"CPU below {PATCHES_BELOW_CHANNELS} input channels and for an "
           "input smaller than the kernel (the 2x2 and 1x1 rows).", "",
           "| spatial | channels | XLA conv ms | patches_conv ms | "
           "patches / XLA | XLA conv with YNNPACK fusions ms | with / "
           "without |", "|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        f"| {r['size']}x{r['size']} | {r['channels']} | {r['XLA conv']:.2f} "
        f"| {r['patches_conv']:.2f} | "
        f"{r['patches_conv'] / r['XLA conv']:.2f}x | {r[YNN]:.2f} | "
        f"{r[YNN] / r['XLA conv']:.2f}x |")
  (out / "lowering.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
