"""Training-step time of VGG-16 on CIFAR-shaped data: dense against TTL
(Tucker classifier) against CP convs, measured in one run.

The TTL paper reports that VGG-16 simplified with TTL trains 10% faster on
CIFAR-10. CIFAR-10 can't be fetched here, so this times the real train step
(`cj.train.make_step`: forward, backward, SGD-momentum update) on
generated 32x32x3 batches; the step costs the same whatever the pixels are.

  python -m cpac_jax.benchmarks.vgg16 [--batch_size=32] [--repeats=20]

Steps compile as cpac_jax's training compiles them
(`process.compiler_options`: on the CPU without XLA's YNNPACK fusions),
timed by the harness's protocol (`harness.measure`). Beside the three nets,
the dense net with every conv through XLA's conv ("dense, XLA convs"), as
its convs ran before they took the per-conv lowering
(`auto_conv_general_dilated`; its pooling is the dense net's), and the
dense net with the per-conv lowering but XLA's conv where it picks
`winograd_conv` ("dense, no winograd_conv"), and the dense and CP nets
with `nnx.BatchNorm` in place of `layers.BatchNorm` (XLA's reductions
for the batch statistics and their gradient). Writes
experiments/benchmarks/vgg16_train_step.{md,json}.
"""

import sys

import jax
import ml_collections
import optax
from absl import flags
from flax import nnx

import cpac_jax as cj
from cpac_jax.benchmarks import harness
from cpac_jax.functional.conv import conv_lowering

NAME, REPEATS, PACKAGES = "vgg16_train_step", 20, ()
_BATCH = flags.DEFINE_integer("batch_size", 32, "examples per step")
XLA_CONVS = "dense, XLA convs"
NO_WINOGRAD = "dense, no winograd_conv"
NNX_NORM = ", nnx.BatchNorm"
DENSE = ("dense", XLA_CONVS, NO_WINOGRAD, "dense" + NNX_NORM)
VARIANTS = {"dense": 4, XLA_CONVS: 4, NO_WINOGRAD: 4, "dense" + NNX_NORM: 4,
            "tucker": 4, "cp": 0.1, "cp" + NNX_NORM: 0.1}  # -> rank


def settings() -> dict:
  return {"batch_size": _BATCH.value}


def _no_winograd(lhs, rhs, window_strides, padding, **kwargs):
  """The per-conv lowering without `winograd_conv`: `conv_lowering` given
  no batch size never picks it."""
  lowering = conv_lowering(lhs.shape[-1], lhs.shape[1:-1], rhs.shape[:-2])
  return lowering(lhs, rhs, window_strides, padding, **kwargs)


def _variant(name, rank, batch_size) -> harness.Variant:
  row = {"variant": name, "rank": None if name in DENSE else rank}

  def build():
    config = ml_collections.ConfigDict({
        "name": "vgg16",
        "factorization": "dense" if name in DENSE else name.split(",")[0],
        "rank": rank, "implementation": "auto"})
    model = cj.models.build(config, (32, 32, 3), 10, nnx.Rngs(0))
    if name in (XLA_CONVS, NO_WINOGRAD):
      for conv in model.convs:
        conv.conv_general_dilated = (jax.lax.conv_general_dilated
                                     if name == XLA_CONVS else _no_winograd)
    if name.endswith(NNX_NORM):
      for i, norm in enumerate(model.norms):
        model.norms[i] = nnx.BatchNorm(norm.num_features, dtype=norm.dtype,
                                       rngs=nnx.Rngs(0))
    row["params"] = cj.count_params(model)
    (row["factorized_layer_params"],
     row["dense_layer_params"]) = cj.models.count_factorized(model)
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.sgd(0.01, 0.9)
    step_fn = cj.train.make_step(graphdef, tx)
    step = jax.jit(lambda *args: step_fn(*args)[:5],  # the gradients unread
                   compiler_options=cj.process.compiler_options())
    x = jax.random.normal(jax.random.key(1), (batch_size, 32, 32, 3))
    y = jax.random.randint(jax.random.key(2), (batch_size,), 0, 10)
    state = [params, rest, tx.init(params)]

    def call():
      out = jax.block_until_ready(step(*state, x, y))
      state[:] = out[:3]

    return {"step": call}

  return harness.Variant(row, build)


def rows(repeats: int) -> list[dict]:
  rows = harness.measure([_variant(name, rank, _BATCH.value)
                          for name, rank in VARIANTS.items()], repeats)
  dense = next(r for r in rows if r["variant"] == "dense")
  for r in rows:
    r["time_vs_dense"] = r["step_ms"] / dense["step_ms"]
  return rows


def render(run: dict) -> str:
  """vgg16_train_step.md from a run (as vgg16_train_step.json holds it)."""
  meta = run["meta"]
  lines = [
      "# VGG-16 training step: dense vs TTL vs CP", "",
      f"{harness.describe(meta)} A call is a step (forward, backward, "
      "SGD-momentum update), compiled as cpac_jax's training compiles "
      "(`process.compiler_options`), freed blocks kept for the next step "
      "(`process.reuse_host_memory`); time relative to the dense net (its "
      "convs lowered per conv) measured in the same run. "
      f"\"{XLA_CONVS}\": the dense net with every conv through XLA's conv; "
      f"\"{NO_WINOGRAD}\": with XLA's conv where the per-conv lowering "
      "picks winograd_conv; \", nnx.BatchNorm\": with Flax's batch norm "
      "in place of `layers.BatchNorm` (XLA's reductions).", "",
      "| variant | rank | params | factorized layers (ours / dense) "
      "| step time vs dense | median step (ms) | IQR (ms) |",
      "|---|---|---|---|---|---|---|"]
  for r in run["rows"]:
    layers_cell = ("-" if r["variant"] in DENSE else
                   f"{r['factorized_layer_params']:,} / "
                   f"{r['dense_layer_params']:,}")
    lines.append(
        f"| {r['variant']} | {r['rank'] if r['rank'] is not None else '-'} "
        f"| {r['params']:,} | {layers_cell} | {r['time_vs_dense']:.3f}x "
        f"| {r['step_ms']:.1f} | {r['step_iqr_ms']:.1f} |")
  return "\n".join(lines) + "\n"


def summary(run: dict) -> str:
  """The run's headline figures, for the benchmarks' README."""
  rows = {r["variant"]: r for r in run["rows"]}
  dense = rows["dense"]

  def against(name):
    r = rows[name]
    return (f"{r['time_vs_dense']:.3f}x the dense step's time "
            f"({r['step_ms']:.0f} against {dense['step_ms']:.0f} ms; IQR "
            f"{r['step_iqr_ms']:.0f} and {dense['step_iqr_ms']:.0f} ms)")

  tucker = rows["tucker"]
  return "\n".join([
      f"- Dense VGG-16 (convs lowered per conv): {dense['step_ms']:.0f} ms a "
      f"step at batch {run['meta']['batch_size']}. With XLA's conv "
      f"throughout: {against(XLA_CONVS)}; without winograd_conv: "
      f"{against(NO_WINOGRAD)}.",
      f"- TTL classifier (TuckerDense rank {tucker['rank']}, "
      f"{tucker['factorized_layer_params']:,} weights in place of "
      f"{tucker['dense_layer_params']:,}): {against('tucker')}. The paper's "
      "claim is 10% faster (0.9x); the convs are nearly all of this step.",
      f"- CP convs (rank fraction {rows['cp']['rank']}): {against('cp')}.",
      f"- With `nnx.BatchNorm` in place of `layers.BatchNorm`: dense "
      f"{against('dense' + NNX_NORM)}; CP {against('cp' + NNX_NORM)}, "
      f"{rows['cp' + NNX_NORM]['step_ms'] / rows['cp']['step_ms']:.2f}x "
      "the CP step's."])

if __name__ == "__main__":
  harness.main(sys.modules[__name__])
