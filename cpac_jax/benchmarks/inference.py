"""Inference: forward time only, at batch 1 (latency) and batch 64
(throughput), of the factorized layers and of whole models against their
dense twins, Flax's and PyTorch's, measured in one run.

  pip install -e ".[bench]"
  python -m cpac_jax.benchmarks.inference [--repeats=20] [--render_only]
      [--quick] [--out=DIR]

Layers: the shapes and layers of `cpac_jax.benchmarks.layers`
(`layers.cases`, every shape at each batch size): CP, Tucker and TT 3x3
and 5x5 convs, and TuckerDense, TTDense and LowRankDense, at rank
fractions 0.5, 0.1 and 0.015 (about 2x, 10x and 66x fewer parameters), and
the TTL paper's TuckerDense (5, 5, 10), each in implementation auto,
factorized and reconstructed; against the fastest dense Flax layer of the
shape (`nnx.Conv` on XLA's conv and, where `conv_lowering` picks another
lowering, through it; `nnx.Linear`) and PyTorch's dense layer of the shape
(`torch.nn.Conv2d`, `torch.nn.Linear`). `auto` misses where its forward
takes over MISS times its fastest own path's (factorized or
reconstructed), counted per batch size.

Models: the CPAC-CNN net (dense, and CP at configs/cpac_mnist.py's rank in
each implementation), the compression study's CNN (dense, and compressed
by `cj.compress` to Tucker at budget 0.1, configs/compress_fashion_mnist.py's
layers), VGG-16 on 32x32x3 (dense, CP convs and the TTL classifier, as
`cpac_jax.benchmarks.vgg16` builds them) and the ViT
(configs/compress_vit_fashion_mnist.py's, dense and compressed to
low-rank "svd" at budget 0.25), from their random initialisation (the time
of a forward doesn't depend on the weights); each against its dense Flax
twin, and the PyTorch twin of the dense net (`torch_models`) eager and
through `torch.compile` (a compile that fails is a row with its error).

Every JAX forward is compiled as cpac_jax's training compiles its steps
(`process.compiler_options`), the process keeping freed blocks for the
next call (`process.reuse_host_memory`); PyTorch runs channels-first (its
default layout) in eval mode under `torch.inference_mode()`, on all
cores. Each shape (or model) at each batch size is a group, timed by the
harness's protocol (`harness.measure`). Writes
experiments/benchmarks/inference.{md,json}.

--quick: every section end to end at toy size, to check the command: two
repeats, a tiny conv and a tiny dense shape, the CPAC-CNN net alone and
its PyTorch twin eager only (torch.compile's compiles would take some 16 s
of CPU, nearly half the quick run's), XLA's backend at optimization level
1; into a temporary folder unless --out names one (never
experiments/benchmarks).
"""

import os
import statistics
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import app, flags
from flax import nnx

import cpac_jax as cj
from cpac_jax.benchmarks import harness, layers, vgg16
from cpac_jax.functional import choose

# The bench extra, imported by `prepare` (rendering needs none of it).
torch = torch_models = None

NAME, REPEATS, PACKAGES = "inference", 20, ("torch",)
BATCHES = (1, 64)  # latency, throughput
QUICK_REPEATS = 2
DEFAULT_OUT = "experiments/benchmarks"
# `auto` misses where its forward takes over this times its fastest path's.
MISS = 1.1
# The models as the studies build them (tests/test_benchmarks.py checks
# these against the configs): CPAC-CNN's CP rank and implementation
# (configs/cpac_mnist.py), the CNN's and the ViT's compression
# (configs/compress_fashion_mnist.py, configs/compress_vit_fashion_mnist.py:
# the layers they compress, a budget of each study).
CPAC_RANK, CPAC_IMPLEMENTATION = 5, "reconstructed"
CNN_COMPRESSION = {"budget": 0.1, "factorization": "tucker",
                   "exclude": ("convs/0", "out")}
VIT_KWARGS = {"depth": 4, "width": 128, "heads": 4, "patch": 7}
VIT_COMPRESSION = {"budget": 0.25, "factorization": "svd",
                   "exclude": ("patches", "head")}
COMPILED = "dense, torch.compile"

_QUICK = flags.DEFINE_bool(
    "quick", False, "every section at toy size, two repeats, into a "
    "temporary folder (or --out): checks the command, times nothing that "
    "means anything")


def settings() -> dict:
  return {"quick": True} if _QUICK.value else {}


def prepare() -> None:
  """Imports PyTorch, refuses a quick run into the records' folder, keeps
  freed host memory as the command lines do."""
  global torch, torch_models
  try:
    import torch

    from cpac_jax.benchmarks import torch_models
  except ImportError as error:
    raise app.UsageError(f"the inference benchmark needs the bench extra "
                         f'({error}): pip install -e ".[bench]"') from error
  if _QUICK.value and (harness.out_dir().resolve()
                       == Path(DEFAULT_OUT).resolve()):
    raise app.UsageError(f"--quick writes no record into {DEFAULT_OUT}; "
                         "leave --out out (a temporary folder) or name "
                         "another")
  cj.process.reuse_host_memory()
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)


# -- the calls ---------------------------------------------------------------

def _forward(module, x) -> dict:
  """The "forward" call of an nnx module (a layer, or a model in eval
  mode) on `x`, compiled as `harness.layer_calls` compiles it."""
  return {"forward": harness.layer_calls(module, x)["forward"]}


def _torch_forward(module, x, compiled: bool = False) -> dict:
  """The "forward" call of a torch module on `x`, in eval mode under
  `torch.inference_mode()`; with `compiled`, through `torch.compile`
  (compiled at the harness's first warm-up call)."""
  module.eval()
  if compiled:
    module = torch.compile(module, dynamic=False)

  def forward():
    with torch.inference_mode():
      module(x)

  return {"forward": forward}


def _channels_first(x: jax.Array):
  """`x` as a torch tensor, an image batch (N, H, W, C) as (N, C, H, W)."""
  tensor = torch.from_numpy(np.array(x))
  if tensor.ndim == 4:
    tensor = tensor.permute(0, 3, 1, 2).contiguous()
  return tensor


def _torch_params(module) -> int:
  return sum(p.numel() for p in module.parameters())


def _torch_dense(layer):
  """PyTorch's dense layer of an `nnx.Conv` (stride 1, SAME padding: what
  `layers.cases` builds) or `nnx.Linear`'s shape."""
  if isinstance(layer, nnx.Conv):
    return torch.nn.Conv2d(layer.in_features, layer.out_features,
                           tuple(layer.kernel_size), padding="same")
  return torch.nn.Linear(layer.in_features, layer.out_features)


# -- the layers --------------------------------------------------------------

def _shapes(batch: int):
  """`layers.cases` at `batch`, LowRankDense included; with --quick, a
  conv 8->8 on 8x8 (its layers `auto` only) and a dense 16->8, at rank
  fraction 0.5."""
  if not _QUICK.value:
    return list(layers.cases(batch=batch, low_rank=True))
  rngs, one = nnx.Rngs(0), {"f=0.5": 0.5}
  return [(*layers.conv_case(8, 8, 3, 8, batch, rngs, fractions=one,
                             implementations=("auto",)), True),
          (*layers.dense_case((4, 4), (8,), batch, [], ((2, 2, 2, 2),
                                                        (2, 2, 2, 1)),
                              rngs, fractions=one, low_rank=True), True)]


def _layer_rows(repeats: int, batch: int) -> list[dict]:
  rows = []
  for shape, denses, x, variants, fitted in _shapes(batch):
    base = {"section": "layers", "batch": batch, "shape": shape,
            "fitted": fitted}
    built, dense_names = dict(denses + variants), dict(denses)
    timed = [harness.Variant(
        {**base, "library": "Flax" if name in dense_names else "cpac_jax",
         "variant": name},
        lambda layer=layer, x=x: _forward(layer, x))
        for name, layer in denses + variants]
    torch_dense = _torch_dense(denses[0][1])
    timed.append(harness.Variant(
        {**base, "library": "PyTorch", "variant": "dense",
         "params": _torch_params(torch_dense)},
        lambda x=x, module=torch_dense: _torch_forward(
            module, _channels_first(x))))
    measured = harness.measure(timed, repeats)
    # Every ratio is against the fastest dense Flax layer of the group.
    reference = min((r for r in measured if r["library"] == "Flax"
                     and "forward_ms" in r),
                    key=lambda r: r["forward_ms"])
    dense_params = cj.count_params(denses[0][1])
    for row in measured:
      row["dense_reference"] = reference["variant"]
      if "forward_ms" in row:
        row["forward_vs_dense"] = row["forward_ms"] / reference["forward_ms"]
      if row["library"] == "PyTorch":
        continue
      layer = built[row["variant"]]
      flops = layer.flops(x.shape) if hasattr(layer, "flops") else {}
      if flops and "dense" not in flops:  # LowRankDense's count lacks it
        flops["dense"] = x.shape[0] * layer.in_features * layer.out_features
      row.update({
          "params": cj.count_params(layer),
          "compression": dense_params / cj.count_params(layer),
          "rank": getattr(layer, "rank", None),
          "flops_vs_dense": {k: flops[k] / flops["dense"]
                             for k in ("factorized", "reconstructed")
                             if k in flops},
          "auto_path": (choose("auto", flops)
                        if row["variant"].endswith(" auto") else None)})
    rows += measured
  return rows


def autos(rows) -> list[dict]:
  """For each `auto` layer row whose factorized and reconstructed twins
  were timed: {"batch", "shape", "layer", "fitted", "path" (auto's),
  "faster" (the faster twin), "vs_faster" (auto's forward over it),
  "miss" (over MISS)}."""
  timed = {(r["batch"], r["shape"], r["variant"]): r for r in rows
           if r["section"] == "layers" and r["library"] == "cpac_jax"
           and "forward_ms" in r}
  found = []
  for (batch, shape, variant), row in timed.items():
    if not row.get("auto_path"):
      continue
    layer = variant.removesuffix(" auto")
    twins = {path: timed.get((batch, shape, f"{layer} {path}"))
             for path in ("factorized", "reconstructed")}
    if None in twins.values():
      continue
    faster = min(twins, key=lambda path: twins[path]["forward_ms"])
    vs_faster = row["forward_ms"] / twins[faster]["forward_ms"]
    found.append({"batch": batch, "shape": shape, "layer": layer,
                  "fitted": row["fitted"], "path": row["auto_path"],
                  "faster": faster, "vs_faster": vs_faster,
                  "miss": vs_faster > MISS})
  return found


# -- the models --------------------------------------------------------------

def _model(name, input_shape, factorization="dense", rank=0,
           implementation="auto", **kwargs):
  config = ml_collections.ConfigDict({
      "name": name, "factorization": factorization, "rank": rank,
      "implementation": implementation, "kwargs": kwargs})
  return cj.models.build(config, input_shape, 10, nnx.Rngs(0))


def _compressed(make, compression):
  return lambda: cj.compress(make(), compression["budget"],
                             compression["factorization"],
                             exclude=compression["exclude"])[0]


def _models():
  """(model, input (H, W, C), [(library, variant, make), ...], the dense
  Flax net's `make` first; make() builds an nnx model or a torch module)."""
  cpac = [
      ("Flax", "dense", lambda: _model("cpac_cnn_2", (28, 28, 1))),
      *(("cpac_jax", f"CP rank {CPAC_RANK}, {implementation}"
         + (" (the config's)" if implementation == CPAC_IMPLEMENTATION
            else ""),
         lambda implementation=implementation: _model(
             "cpac_cnn_2", (28, 28, 1), "cp", CPAC_RANK, implementation))
        for implementation in layers.IMPLEMENTATIONS),
      *_torch_twins(lambda: torch_models.CPACNet(
          lambda i, o: torch.nn.Conv2d(i, o, 3, bias=False)))]
  yield "CPAC-CNN, 2 convs, MNIST 28x28x1", (28, 28, 1), cpac
  if _QUICK.value:
    return

  def cnn():
    return _model("cnn", (28, 28, 1))

  yield "CNN (compression study), 28x28x1", (28, 28, 1), [
      ("Flax", "dense", cnn),
      ("cpac_jax", f"Tucker, budget {CNN_COMPRESSION['budget']}",
       _compressed(cnn, CNN_COMPRESSION)),
      *_torch_twins(lambda: torch_models.CNN())]
  ranks = vgg16.VARIANTS
  yield "VGG-16, CIFAR-10 32x32x3", (32, 32, 3), [
      ("Flax", "dense", lambda: _model("vgg16", (32, 32, 3))),
      ("cpac_jax", f"CP convs, rank {ranks['cp']}", lambda: _model(
          "vgg16", (32, 32, 3), "cp", ranks["cp"])),
      ("cpac_jax", f"TTL classifier, Tucker rank {ranks['tucker']}",
       lambda: _model("vgg16", (32, 32, 3), "tucker", ranks["tucker"])),
      *_torch_twins(lambda: torch_models.vgg16(
          lambda i, o, _: torch.nn.Conv2d(i, o, 3, padding=1)))]

  def vit():
    return _model("vit", (28, 28, 1), **VIT_KWARGS)

  yield "ViT, 28x28x1", (28, 28, 1), [
      ("Flax", "dense", vit),
      ("cpac_jax", f"low-rank (svd), budget {VIT_COMPRESSION['budget']}",
       _compressed(vit, VIT_COMPRESSION)),
      *_torch_twins(lambda: torch_models.ViT(**VIT_KWARGS))]


def _torch_twins(make):
  """PyTorch's dense twin eager and (not --quick) through torch.compile."""
  return [("PyTorch", "dense, eager", make),
          *((("PyTorch", COMPILED, make),) if not _QUICK.value else ())]


def _model_rows(repeats: int, batch: int) -> list[dict]:
  rows = []
  for model, input_shape, nets in _models():
    x = jax.random.normal(jax.random.key(1), (batch, *input_shape))
    timed = []
    for library, variant, make in nets:
      row = {"section": "models", "batch": batch, "model": model,
             "library": library, "variant": variant}

      def build(row=row, make=make, x=x):
        net = make()
        if row["library"] == "PyTorch":
          row["params"] = _torch_params(net)
          return _torch_forward(net, _channels_first(x),
                                compiled=row["variant"] == COMPILED)
        row["params"] = cj.count_params(net)
        net.eval()
        return _forward(net, x)

      timed.append(harness.Variant(row, build))
    measured = harness.measure(timed, repeats)
    dense = measured[0]  # the dense Flax net
    for row in measured:
      if "params" in row and "params" in dense:
        row["compression"] = dense["params"] / row["params"]
      if "forward_ms" in row and "forward_ms" in dense:
        row["forward_vs_dense"] = row["forward_ms"] / dense["forward_ms"]
    rows += measured
  return rows


def rows(repeats: int) -> list[dict]:
  rows = []
  for batch in BATCHES:
    rows += _layer_rows(repeats, batch)
  for batch in BATCHES:
    rows += _model_rows(repeats, batch)
  return rows


# -- the report --------------------------------------------------------------

def _ratio(row: dict) -> str:
  if "error" in row:
    return f"failed: {row['error']}"
  return f"{row['forward_vs_dense']:.2f}x"


def _rank(rank) -> str:
  rank = tuple(rank) if isinstance(rank, list) else rank  # JSON's lists
  return "-" if rank is None else str(rank)


def _misses(rows) -> list[str]:
  found = autos(rows)
  lines = ["## `auto` against its own paths", "",
           "`auto` picks by `cpac_jax.functional.choose` (multiply-adds and "
           "the factorized path's intermediates), a cost fitted to "
           "forward+backward at training batch sizes; here it is timed "
           "forward only. A miss: `auto`'s forward over "
           f"{MISS}x the forward of the faster of its two paths "
           "(factorized, reconstructed), in the same run.", ""]
  for batch in dict.fromkeys(a["batch"] for a in found):
    at = [a for a in found if a["batch"] == batch]
    counts = [f"{sum(a['miss'] for a in at)} of {len(at)} layers"]
    for fitted, title in ((True, "the shapes its cost was fitted to"),
                          (False, "other shapes")):
      part = [a for a in at if a["fitted"] == fitted]
      if part:
        counts.append(f"{sum(a['miss'] for a in part)} of {len(part)} on "
                      f"{title}")
    lines.append(f"- Batch {batch}: `auto` missed in {counts[0]} ("
                 + "; ".join(counts[1:]) + f"); it took the faster path in "
                 f"{sum(a['path'] == a['faster'] for a in at)}.")
  misses = [a for a in found if a["miss"]]
  if misses:
    lines += ["", "| batch | shape | layer | auto's path | faster path "
              "| auto / faster path |", "|---|---|---|---|---|---|"]
    lines += [f"| {a['batch']} | {a['shape']} | {a['layer']} | {a['path']} "
              f"| {a['faster']} | {a['vs_faster']:.2f}x |" for a in misses]
  return lines + [""]


def _model_table(rows) -> list[str]:
  lines = ["## Whole models", "",
           "Each against its dense Flax net at the same batch size, "
           "measured in the same group; PyTorch's twin of the dense net "
           "eager and through `torch.compile`.", "",
           "| model | batch | library | variant | params | compression "
           "| forward ms | IQR ms | vs dense Flax |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    timing = (f"{r['forward_ms']:.3f} | {r['forward_iqr_ms']:.3f}"
              if "forward_ms" in r else "- | -")
    params = f"{r['params']:,}" if "params" in r else "-"
    compression = (f"{r['compression']:.2f}x" if "compression" in r
                   else "-")
    lines.append(
        f"| {r['model']} | {r['batch']} | {r['library']} | {r['variant']} "
        f"| {params} | {compression} | {timing} | {_ratio(r)} |")
  return lines + [""]


def _layer_tables(rows, batch: int) -> list[str]:
  title = {1: " (latency)", 64: " (throughput)"}.get(batch, "")
  lines = [f"## Layers, batch {batch}{title}", ""]
  for shape in dict.fromkeys(r["shape"] for r in rows if r["batch"] == batch):
    group = [r for r in rows if r["batch"] == batch and r["shape"] == shape]
    reference = next(r for r in group if r["variant"] == r["dense_reference"]
                     and r["library"] == "Flax")
    lines += [f"### {shape}", "",
              f"Fastest dense Flax layer: `{reference['variant']}`, "
              f"{reference['forward_ms']:.4f} ms.", "",
              "| variant | library | rank | params | compression | forward ms "
              "| vs fastest dense Flax | multiply-adds (factorized / "
              "reconstructed) |", "|---|---|---|---|---|---|---|---|"]
    for r in group:
      flops = r.get("flops_vs_dense") or {}
      flops_cell = (f"{flops['factorized']:.3f} / {flops['reconstructed']:.3f}"
                    if flops else "1")
      compression = (f"{r['compression']:.1f}x" if "compression" in r
                     else "1.0x")
      timing = (f"{r['forward_ms']:.4f}" if "forward_ms" in r else "-")
      lines.append(
          f"| {r['variant']} | {r['library']} | {_rank(r.get('rank'))} "
          f"| {r['params']:,} | {compression} | {timing} | {_ratio(r)} "
          f"| {flops_cell} |")
    lines.append("")
  return lines


def render(run: dict) -> str:
  """inference.md from a run (as inference.json holds it)."""
  meta, rows = run["meta"], run["rows"]
  layer_rows = [r for r in rows if r["section"] == "layers"]
  model_rows = [r for r in rows if r["section"] == "models"]
  lines = ["# Inference: forward time at batch 1 and 64, factorized "
           "against dense", "",
           f"{harness.describe(meta)} Forward only. JAX compiled as "
           "cpac_jax's training compiles its steps "
           "(`process.compiler_options`), freed blocks kept for the next "
           "call (`process.reuse_host_memory`); PyTorch channels-first in "
           "eval mode under `torch.inference_mode()`, on "
           f"{meta['cpu_count']} threads, `torch.compile(dynamic=False)` "
           "where named. Each layer shape and each model at each batch "
           "size is a group; every ratio is against the fastest dense Flax "
           "layer of its group (layers) or the dense Flax net (models), "
           "measured in the same run.", ""]
  if meta.get("quick"):
    lines += ["**Quick run** (`--quick`): toy shapes, one model and no "
              "`torch.compile`, to check the command; its times mean "
              "nothing.", ""]
  lines += _misses(layer_rows) + _model_table(model_rows)
  for batch in dict.fromkeys(r["batch"] for r in layer_rows):
    lines += _layer_tables(layer_rows, batch)
  return "\n".join(lines)


def summary(run: dict) -> str:
  """The run's headline figures, for the benchmarks' README."""
  rows, lines = run["rows"], []
  found = autos(rows)
  for batch in dict.fromkeys(r["batch"] for r in rows
                             if r["section"] == "layers"):
    at = [a for a in found if a["batch"] == batch]
    torch_dense = [r["forward_vs_dense"] for r in rows
                   if r["section"] == "layers" and r["batch"] == batch
                   and r["library"] == "PyTorch" and "forward_vs_dense" in r]
    lines.append(
        f"- Layers at batch {batch}: `auto` over {MISS}x its faster path's "
        f"forward time in {sum(a['miss'] for a in at)} of {len(at)} layers"
        + (f" (median {statistics.median(a['vs_faster'] for a in at):.2f}x)"
           if at else "")
        + "; PyTorch's dense layer "
        + (f"{min(torch_dense):.2f}x-{max(torch_dense):.2f}x"
           if torch_dense else "not timed")
        + " the fastest dense Flax layer's forward time over "
        f"{len(torch_dense)} shapes.")
  models = [r for r in rows if r["section"] == "models"]
  for model, batch in dict.fromkeys((r["model"], r["batch"])
                                    for r in models):
    group = [r for r in models if (r["model"], r["batch"]) == (model, batch)]
    dense = group[0]
    others = [f"{r['variant']} ({r['library']}) {_ratio(r)}"
              for r in group[1:]]
    lines.append(f"- {model}, batch {batch}, against the dense Flax net's "
                 + (f"{dense['forward_ms']:.3g} ms: "
                    if "forward_ms" in dense else "forward: ")
                 + "; ".join(others) + ".")
  return "\n".join(lines)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; flags only")
  if _QUICK.value:
    harness.small_run("inference_quick_", QUICK_REPEATS)
  harness.run(sys.modules[__name__])


if __name__ == "__main__":
  app.run(main)
