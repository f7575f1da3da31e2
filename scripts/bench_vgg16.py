"""Training-step time of VGG-16 on CIFAR-shaped data: dense against TTL
(Tucker classifier) against CP convs, measured in one run.

The TTL paper reports that VGG-16 simplified with TTL trains 10% faster on
CIFAR-10. CIFAR-10 can't be fetched here, so this times the real train step
(cpac_jax.train.make_step: forward, backward, SGD-momentum update) on
generated 32x32x3 batches; the step costs the same whatever the pixels are.

  python scripts/bench_vgg16.py [--batch_size=32] [--repeats=20]

Steps compile as cpac_jax's training compiles them (`process.compiler_options`:
on the CPU without XLA's YNNPACK fusions), in a process whose malloc keeps
freed blocks for the next step (`process.reuse_host_memory`, as cpac_jax's
command lines run). Beside the three nets, the dense
net with every conv through XLA's conv ("dense, XLA convs"), as its convs
ran before they took the per-conv lowering (`auto_conv_general_dilated`;
its pooling is the dense net's), and the dense net with the per-conv
lowering but XLA's conv where it picks `winograd_conv` ("dense, no
winograd_conv").
Writes experiments/benchmarks/vgg16_train_step.{md,json}: the median of
`repeats` timed steps per variant after compilation, variants interleaved
round by round so machine noise hits all alike, each timed step right after
an untimed one of the same variant (a step after another variant's runs
cold), and ratios against dense.
"""

import json
import platform
import statistics
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
import optax
from absl import app, flags
from flax import nnx

from cpac_jax import layers, models, process, report, train
from cpac_jax.functional.conv import conv_lowering

_BATCH = flags.DEFINE_integer("batch_size", 32, "examples per step")
_REPEATS = flags.DEFINE_integer("repeats", 20, "timed steps per variant")
_OUT = flags.DEFINE_string("out", "experiments/benchmarks",
                           "folder for vgg16_train_step.{md,json}")
XLA_CONVS = "dense, XLA convs"
NO_WINOGRAD = "dense, no winograd_conv"
DENSE = ("dense", XLA_CONVS, NO_WINOGRAD)
VARIANTS = {"dense": 4, XLA_CONVS: 4, NO_WINOGRAD: 4, "tucker": 4,
            "cp": 0.1}  # -> rank


def _no_winograd(lhs, rhs, window_strides, padding, **kwargs):
  """The per-conv lowering without `winograd_conv`: `conv_lowering` given
  no batch size never picks it."""
  lowering = conv_lowering(lhs.shape[-1], lhs.shape[1:-1], rhs.shape[:-2])
  return lowering(lhs, rhs, window_strides, padding, **kwargs)


def _variant(name, rank, batch_size):
  factorization = "dense" if name in DENSE else name
  config = ml_collections.ConfigDict({
      "name": "vgg16", "factorization": factorization, "rank": rank,
      "implementation": "auto"})
  model = models.build(config, (32, 32, 3), 10, nnx.Rngs(0))
  if name in (XLA_CONVS, NO_WINOGRAD):
    for conv in model.convs:
      conv.conv_general_dilated = (jax.lax.conv_general_dilated
                                   if name == XLA_CONVS else _no_winograd)
  model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.sgd(0.01, 0.9)
  step_fn = train.make_step(graphdef, tx)
  step = jax.jit(lambda *args: step_fn(*args)[:5],  # the gradients unread
                 compiler_options=process.compiler_options())
  x = jax.random.normal(jax.random.key(1), (batch_size, 32, 32, 3))
  y = jax.random.randint(jax.random.key(2), (batch_size,), 0, 10)
  state = [params, rest, tx.init(params)]

  def run():
    out = step(*state, x, y)
    jax.block_until_ready(out)
    state[:] = out[:3]

  run()  # compile
  run()
  ours, dense = models.count_factorized(model)
  return run, layers.count_params(model), ours, dense


def main(argv):
  del argv
  process.reuse_host_memory()
  variants = {name: _variant(name, rank, _BATCH.value)
              for name, rank in VARIANTS.items()}
  times = {name: [] for name in variants}
  for _ in range(_REPEATS.value):
    for name, (run, *_) in variants.items():
      run()  # untimed
      start = time.perf_counter()
      run()
      times[name].append(time.perf_counter() - start)
  dense_time = statistics.median(times["dense"])
  rows = []
  for name, (_, params, ours, dense) in variants.items():
    median = statistics.median(times[name])
    rows.append({
        "variant": name,
        "rank": None if name in DENSE else VARIANTS[name],
        "params": params, "factorized_layer_params": ours,
        "dense_layer_params": dense, "median_step_seconds": median,
        "iqr_step_seconds": float(np.subtract(*np.percentile(
            times[name], [75, 25]))),
        "time_vs_dense": median / dense_time,
    })
  device = f"{jax.devices()[0].device_kind} ({jax.default_backend()})"
  meta = {"device": device, "cpu": report.cpu_name(),
          "cpu_count": jax.local_device_count(),
          "machine": platform.machine(), "batch_size": _BATCH.value,
          "repeats": _REPEATS.value, "jax": jax.__version__}
  out = Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  (out / "vgg16_train_step.json").write_text(
      json.dumps({"meta": meta, "rows": rows}, indent=2))
  lines = [
      "# VGG-16 training step: dense vs TTL vs CP",
      "",
      f"`python scripts/bench_vgg16.py --batch_size={_BATCH.value} "
      f"--repeats={_REPEATS.value}` on {device}, {meta['cpu']} "
      f"({platform.machine()}), jax {jax.__version__}. Median of "
      f"{_REPEATS.value} steps after compilation (forward, backward, "
      "SGD-momentum update), compiled as cpac_jax's training compiles "
      "(`process.compiler_options`), freed blocks kept for the next step "
      "(`process.reuse_host_memory`), variants interleaved, each timed step "
      "after an untimed one of the same variant; time relative to the "
      "dense net (its convs lowered per conv) measured in the same run. "
      f"\"{XLA_CONVS}\": the dense net with every conv through XLA's conv; "
      f"\"{NO_WINOGRAD}\": with XLA's conv where the per-conv lowering "
      "picks winograd_conv.",
      "",
      "| variant | rank | params | factorized layers (ours / dense) "
      "| step time vs dense | median step (ms) | IQR (ms) |",
      "|---|---|---|---|---|---|---|"]
  for r in rows:
    layers_cell = ("-" if r["variant"] in DENSE else
                   f"{r['factorized_layer_params']:,} / "
                   f"{r['dense_layer_params']:,}")
    lines.append(
        f"| {r['variant']} | {r['rank'] if r['rank'] is not None else '-'} "
        f"| {r['params']:,} | {layers_cell} | {r['time_vs_dense']:.3f}x "
        f"| {1e3 * r['median_step_seconds']:.1f} "
        f"| {1e3 * r['iqr_step_seconds']:.1f} |")
  (out / "vgg16_train_step.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
