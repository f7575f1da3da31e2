"""Training-step time of the shoot-out nets, each decomposition family at
each budget against the same net with its dense layer, measured in one run.

  python scripts/bench_shootout.py [--repeats=15]

For every net of `NETS` (a shoot-out config), the seed-0 run of each family
and budget is built as its config builds it and timed at its own batch
size with its own optimizer: `steps` train steps (cpac_jax.train.make_step:
forward, backward, update) as one compiled `lax.scan`, as the trainer runs
them (unrolled where the config unrolls), on generated batches of the
dataset's shape (the step costs the same whatever the pixels are). Each
net's variants are interleaved round by round, so machine noise hits all
alike; the median of `repeats` rounds.

Writes experiments/benchmarks/shootout_steps.{md,json}: microseconds per
step and the ratio to the net's dense variant measured in the same run.
A sweep's train_seconds are not one model's step alone where its runs
train side by side (`--vectorize`) or share the CPU; this is, and
scripts/shootout_table.py takes its time column from here.
"""

import importlib
import json
import platform
import statistics
import time
from pathlib import Path

import jax
import numpy as np
from absl import app, flags
from flax import nnx

from cpac_jax import config as config_lib
from cpac_jax import data, layers, optimizers, process, train

_REPEATS = flags.DEFINE_integer("repeats", 15, "timed rounds per net")
_OUT = flags.DEFINE_string("out", "experiments/benchmarks",
                           "folder for shootout_steps.{md,json}")
ROOT = Path(__file__).resolve().parents[1]
# config file -> (the layer the budget holds, steps per timed call)
NETS = {
    "configs/shootout_cpac_mnist.py": ("second conv, 8 -> 8 3x3", 500),
    "configs/shootout_ttl_mnist.py": ("hidden layer, 784 -> 300", 50),
    "configs/shootout_cnn_fashion_mnist.py": (
        "the four convs after the first, 138,240 weights", 12),
}


def _config(path: str):
  """The config at `path` (configs/NAME.py), as the package module NAME."""
  return importlib.import_module(
      "configs." + Path(path).stem).get_config()


def _family_budget(run) -> tuple[str, str]:
  """The run's family and budget as the shoot-out tables name them."""
  if run.model.factorization != "dense":
    return run.model.factorization, str(run.model.rank)
  bottleneck = dict(run.model.get("kwargs", {})).get("bottleneck")
  if bottleneck is None:
    return "dense", "dense"
  return "low-rank dense", f"bottleneck {bottleneck}"


def _xla_convs(model) -> list[nnx.Conv]:
  """The model's `nnx.Conv`s on XLA's conv, `nnx.Conv`'s default."""
  return [node for _, node in nnx.iter_graph(model)
          if isinstance(node, nnx.Conv)
          and node.conv_general_dilated is jax.lax.conv_general_dilated]


def _timer(run, steps: int, lowered: bool = False):
  """A call that runs `steps` train steps of `run`'s model (returning the
  seconds per step), and the model's parameter count. `lowered`: its
  `nnx.Conv`s on XLA's conv through `layers.auto_conv_general_dilated`
  instead, the per-conv lowering cpac_jax's own convs take."""
  info = data.INFO[run.dataset.name]
  model = config_lib.build_model(run, info, jax.random.key(0))
  if lowered:
    for conv in _xla_convs(model):
      conv.conv_general_dilated = layers.auto_conv_general_dilated
  model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optimizers.make_optimizer(run.optimizer, 10 * steps)
  step = train.make_step(graphdef, tx)

  @jax.jit
  def chunk(params, rest, opt_state, x, y):
    def body(carry, batch):
      return step(*carry, *batch)[:3], None
    return jax.lax.scan(body, (params, rest, opt_state), (x, y),
                        unroll=bool(run.get("unroll")))[0]

  shape = (steps, run.batch_size, *info.image_shape)
  x = jax.random.normal(jax.random.key(1), shape)
  y = jax.random.randint(jax.random.key(2), shape[:2], 0, info.num_classes)
  state = [params, rest, tx.init(params)]

  def call():
    start = time.perf_counter()
    state[:] = jax.block_until_ready(chunk(*state, x, y))
    return (time.perf_counter() - start) / steps

  call()  # compile
  return call, layers.count_params(model)


def _net(path: str, steps: int) -> list[dict]:
  """One row per seed-0 run of the config at `path`, and, where its dense
  net runs XLA's conv, one for that net through the per-conv lowering
  ("dense, per-conv lowering", not a run of the config: a baseline)."""
  runs = [run for _, run in config_lib.expand(_config(path)) if run.seed == 0]
  names = [_family_budget(run) for run in runs]
  variants = [(run, name, False) for run, name in zip(runs, names)]
  dense = names.index(("dense", "dense"))  # the dense net as trained
  if _xla_convs(config_lib.build_model(runs[dense])):
    variants.append((runs[dense], ("dense", "dense, per-conv lowering"),
                     True))
  timers = [_timer(run, steps, lowered) for run, _, lowered in variants]
  samples = [[] for _ in variants]
  for _ in range(_REPEATS.value):
    for sample, (call, _) in zip(samples, timers):
      sample.append(call())
  medians = [statistics.median(s) for s in samples]
  fastest = min(m for (_, name, _), m in zip(variants, medians)
                if name[0] == "dense")
  return [{"family": family, "budget": budget, "params": params,
           "batch_size": run.batch_size, "median_step_us": 1e6 * median,
           "iqr_step_us": 1e6 * float(np.subtract(*np.percentile(s, [75, 25]))),
           "vs_dense": median / medians[dense],
           "vs_fastest_dense": median / fastest}
          for (run, (family, budget), _), (_, params), median, s in zip(
              variants, timers, medians, samples)]


def main(argv):
  del argv
  process.reuse_host_memory()  # as the sweeps that train these nets run
  results = {path: _net(path, steps) for path, (_, steps) in NETS.items()}
  device = f"{jax.devices()[0].device_kind} ({jax.default_backend()})"
  meta = {"device": device, "machine": platform.machine(),
          "jax": jax.__version__, "repeats": _REPEATS.value,
          "steps_per_call": {p: s for p, (_, s) in NETS.items()}}
  out = Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  (out / "shootout_steps.json").write_text(
      json.dumps({"meta": meta, "nets": results}, indent=2))
  lines = [
      "# Shoot-out nets: one training step per family and budget",
      "",
      f"`python scripts/bench_shootout.py --repeats={_REPEATS.value}` on "
      f"{device}, {platform.machine()}, jax {jax.__version__}. Each run of "
      "a shoot-out config (seed 0), alone, at its config's batch size and "
      "optimizer: the median over rounds of the time per step of a compiled "
      "scan of steps (forward, backward, update), variants interleaved, "
      "freed blocks kept for the next call (`process.reuse_host_memory`, as "
      "the sweeps run). "
      "\"vs dense\" is against the same net with its dense layer (our "
      "Flax `nnx.Conv`/`nnx.Linear`) as the config trains it, \"vs fastest "
      "dense\" against the faster of that and, where its convs run XLA's "
      "conv, the same net with them through the per-conv lowering "
      "(`layers.auto_conv_general_dilated`: winograd_conv or patches_conv "
      "where `conv_lowering` picks them, as cpac_jax's factorized convs "
      "do), all measured in the same run.", ""]
  for path, rows in results.items():
    layer, steps = NETS[path]
    lines += [f"## `{path}` ({layer}; batch size {rows[0]['batch_size']}, "
              f"{steps} steps per call)", "",
              "| family | budget | model params | step (us) | IQR (us) "
              "| vs dense | vs fastest dense |",
              "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['family']} | {r['budget']} | {r['params']:,} | "
              f"{r['median_step_us']:.1f} | {r['iqr_step_us']:.1f} | "
              f"{r['vs_dense']:.2f}x | {r['vs_fastest_dense']:.2f}x |"
              for r in rows]
    lines.append("")
  (out / "shootout_steps.md").write_text("\n".join(lines))
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
