"""Training-step time of the shoot-out nets, each decomposition family at
each budget against the same net with its dense layer, measured in one run.

  python -m cpac_jax.benchmarks.shootout [--repeats=15]

For every net of `NETS` (a shoot-out config), the seed-0 run of each family
and budget is built as its config builds it and timed at its own batch
size with its own optimizer: `steps` train steps (cpac_jax.train.make_step:
forward, backward, update) as one compiled `lax.scan`, as the trainer runs
them (unrolled where the config unrolls), on generated batches of the
dataset's shape (the step costs the same whatever the pixels are), timed
by the harness's protocol (`harness.measure`), each net's variants
together.

Writes experiments/benchmarks/shootout_steps.{md,json}: microseconds per
step and the ratio to the net's dense variant measured in the same run.
A sweep's train_seconds are not one model's step alone where its runs
train side by side (`--vectorize`) or share the CPU; this is, and
scripts/shootout_table.py takes its time column from here.
"""

import importlib
import sys
from pathlib import Path

import jax
from flax import nnx

import cpac_jax as cj
from cpac_jax.benchmarks import harness

NAME, REPEATS, PACKAGES = "shootout_steps", 15, ()
# config file -> (the layer the budget holds, steps per timed call)
NETS = {
    "configs/shootout_cpac_mnist.py": ("second conv, 8 -> 8 3x3", 500),
    "configs/shootout_ttl_mnist.py": ("hidden layer, 784 -> 300", 50),
    "configs/shootout_cnn_fashion_mnist.py": (
        "the four convs after the first, 138,240 weights", 12),
}


def _config(path: str):
  """The config at `path` (configs/NAME.py), as the package module NAME."""
  return importlib.import_module("configs." + Path(path).stem).get_config()


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


def _variant(net: str, run, name: tuple[str, str], steps: int,
             lowered: bool = False) -> harness.Variant:
  """`steps` train steps of `run`'s model as one call. `lowered`: its
  `nnx.Conv`s on XLA's conv through `layers.auto_conv_general_dilated`
  instead, the per-conv lowering cpac_jax's own convs take."""
  row = {"net": net, "family": name[0], "budget": name[1],
         "batch_size": run.batch_size, "steps": steps}

  def build():
    info = cj.data.INFO[run.dataset.name]
    model = cj.config.build_model(run, info, jax.random.key(0))
    if lowered:
      for conv in _xla_convs(model):
        conv.conv_general_dilated = cj.layers.auto_conv_general_dilated
    row["params"] = cj.count_params(model)
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = cj.optimizers.make_optimizer(run.optimizer, 10 * steps)
    step = cj.train.make_step(graphdef, tx)

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
      state[:] = jax.block_until_ready(chunk(*state, x, y))

    return {"chunk": call}

  return harness.Variant(row, build)


def _net(path: str, steps: int, repeats: int) -> list[dict]:
  """One row per seed-0 run of the config at `path`, and, where its dense
  net runs XLA's conv, one for that net through the per-conv lowering
  ("dense, per-conv lowering", not a run of the config: a baseline)."""
  runs = [run for _, run in cj.config.expand(_config(path))
          if run.seed == 0]
  names = [_family_budget(run) for run in runs]
  variants = [_variant(path, run, name, steps)
              for run, name in zip(runs, names)]
  index = names.index(("dense", "dense"))  # the dense net as trained
  dense = variants[index]
  if _xla_convs(cj.config.build_model(runs[index])):
    variants.append(_variant(path, runs[index],
                             ("dense", "dense, per-conv lowering"), steps,
                             lowered=True))
  rows = harness.measure(variants, repeats)
  fastest = min(r["chunk_ms"] for r in rows if r["family"] == "dense")
  for r in rows:
    r["median_step_us"] = 1e3 * r["chunk_ms"] / steps
    r["iqr_step_us"] = 1e3 * r["chunk_iqr_ms"] / steps
    r["vs_dense"] = r["chunk_ms"] / dense.row["chunk_ms"]
    r["vs_fastest_dense"] = r["chunk_ms"] / fastest
  return rows


def rows(repeats: int) -> list[dict]:
  return [row for path, (_, steps) in NETS.items()
          for row in _net(path, steps, repeats)]


def render(run: dict) -> str:
  """shootout_steps.md from a run (as shootout_steps.json holds it)."""
  lines = [
      "# Shoot-out nets: one training step per family and budget",
      "",
      f"{harness.describe(run['meta'])} Each run of a shoot-out config "
      "(seed 0), alone, at its config's batch size and optimizer: the "
      "time per step of a compiled scan of steps (forward, backward, "
      "update; each net's variants a group), freed blocks kept for the "
      "next call "
      "(`process.reuse_host_memory`, as the sweeps run). "
      "\"vs dense\" is against the same net with its dense layer (our "
      "Flax `nnx.Conv`/`nnx.Linear`) as the config trains it, \"vs fastest "
      "dense\" against the faster of that and, where its convs run XLA's "
      "conv, the same net with them through the per-conv lowering "
      "(`layers.auto_conv_general_dilated`: winograd_conv or patches_conv "
      "where `conv_lowering` picks them, as cpac_jax's factorized convs "
      "do), all measured in the same run.", ""]
  for path, (layer, steps) in NETS.items():
    rows = [r for r in run["rows"] if r["net"] == path]
    if not rows:
      continue
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
  return "\n".join(lines)


def summary(run: dict) -> str:
  """The run's headline figures, for the benchmarks' README."""
  lines = []
  for path in NETS:
    rows = [r for r in run["rows"] if r["net"] == path
            and r["family"] != "dense"]
    if rows:
      ratios = [r["vs_dense"] for r in rows]
      lines.append(f"- `{path}`: the factorized nets' step "
                   f"{min(ratios):.2f}x-{max(ratios):.2f}x the dense net's "
                   f"({len(rows)} nets).")
  return "\n".join(lines)

if __name__ == "__main__":
  harness.main(sys.modules[__name__])
