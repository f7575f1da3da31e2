"""cpac_jax against its peers, measured in one run on one machine: PyTorch's
dense layers, TensorLy-Torch's factorized layers (both of their paths), our
layers (`auto`, factorized, reconstructed; the reconstructed and Tucker/TT
factorized paths also through `patches_conv`; the reconstructed path runs
`winograd_conv` at these conv shapes by default), and JAX's dense layer
(XLA's conv, `patches_conv` and `winograd_conv`).

  pip install -e ".[bench]"
  python -m cpac_jax.benchmarks.peers [--repeats=10]
      [--sections=layers,cpac,vgg16]
      [--host_memory=reuse|huge_pages|default]

Sections:
  layers: forward and forward+backward (the gradient of sum(y^2) with
    respect to the parameters) of a 3x3 conv 64->64 on 32x32 and 256->256
    on 16x16 (batch 32), and of the TTL layer 784->300 (batch 128), CP,
    Tucker and TT at rank fractions 0.5, 0.1 and 0.015 (about 2x, 10x and
    66x fewer parameters; each row gives its own count), and the TTL
    paper's Tucker (5, 5, 10);
  cpac: a training step (forward, cross-entropy, backward, SGD update) of
    the CPAC-CNN nets (two 3x3 convs of 8 filters, as the official code),
    dense and CP rank 5, at batch 1 and 64;
  vgg16: a training step of VGG-16 with batch norm on 32x32x3, batch 32,
    dense and with CP convs (rank fraction 0.1).

PyTorch runs channels-first (its default layout), JAX channels-last (ours).
Our layers and steps compile as cpac_jax's training compiles its steps
(`process.compiler_options`: on the CPU without XLA's YNNPACK fusions, with
which XLA's conv forward+backward ran up to 1.78x slower on an AVX-512
CPU and 11.6x on an AVX2-only one, experiments/benchmarks/lowering.md and
its git history).
The process keeps the blocks it frees for the next call
(`process.reuse_host_memory`, as cpac_jax's command lines run; PyTorch's
rows share it), unless --host_memory=default: with glibc's defaults a call
whose temporaries need over 32 MiB maps and faults them in afresh, which
`cpac_jax.benchmarks.host_memory` measures. Each figure also records the page
faults a timed call took.
Timed by the harness's protocol (`harness.measure`: interleaved, in a
new order each round, each timed call after an untimed one of the same
variant); a peer path that raises is reported with its error, one whose
second warm-up call takes over --slow_s seconds with that time, and not
timed further. Writes experiments/benchmarks/peers.{md,json}.
"""

import json
import math
import os
import sys
from pathlib import Path

import jax
import ml_collections
import optax
from absl import app, flags
from flax import nnx

import cpac_jax as cj
from cpac_jax.benchmarks import harness
from cpac_jax.layers import patches_conv, winograd_conv

# The bench extra, imported by `prepare` (rendering needs none of it).
torch = tltorch = torch_models = None

NAME, REPEATS = "peers", 10
PACKAGES = ("torch", "tensorly", "tensorly-torch")
SECTIONS = ("layers", "cpac", "vgg16")
_SECTIONS = flags.DEFINE_list("sections", list(SECTIONS),
                              f"which of {', '.join(SECTIONS)} to run")
_THREADS = flags.DEFINE_integer("threads", os.cpu_count(),
                                "PyTorch's intra-op threads")
_SLOW = flags.DEFINE_float("slow_s", 5.0, "a second warm-up call slower "
                           "than this is reported, not timed")
_HOST_MEMORY = flags.DEFINE_enum(
    "host_memory", "reuse", ["reuse", "huge_pages", "default"],
    "reuse: glibc's malloc keeps freed blocks for the next call "
    "(`process.reuse_host_memory`); huge_pages: that, and what it maps "
    "backed by transparent huge pages (`process.restart_with_huge_pages`; "
    "both as cpac_jax's command lines run); default: glibc's defaults")
FRACTIONS = {"2x": 0.5, "10x": 0.1, "66x": 0.015}
OURS = {"CP": cj.layers.CPConv, "Tucker": cj.layers.TuckerConv,
        "TT": cj.layers.TTConv}
PEER = {"CP": "cp", "Tucker": "tucker", "TT": "tt"}  # tltorch's names


# -- timing ------------------------------------------------------------------

def _torch_layer(module, x):
  def forward():
    with torch.no_grad():
      module(x)

  def backward():
    module.zero_grad(set_to_none=True)
    (module(x) ** 2).sum().backward()

  return {"forward": forward, "backward": backward}


def _jax_step(model, x, y, learning_rate=1e-4):
  """One jit-compiled Adam step of `model` (`cj.train.make_step`), compiled
  as cpac_jax's training compiles it (`cj.process.compiler_options`)."""
  model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.adam(learning_rate)
  step = jax.jit(lambda *args: cj.train.make_step(graphdef, tx)(*args)[:3],
                 compiler_options=cj.process.compiler_options())
  state = [params, rest, tx.init(params)]

  def run():
    state[:] = jax.block_until_ready(step(*state, x, y))

  return {"step": run}


def _torch_step(module, x, y, learning_rate=1e-4):
  optimizer = torch.optim.Adam(module.parameters(), lr=learning_rate)
  module.train()

  def run():
    optimizer.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(module(x), y).backward()
    optimizer.step()

  return {"step": run}


def _torch_params(module) -> int:
  return sum(p.numel() for p in module.parameters())


# -- the layers --------------------------------------------------------------

def _adder(variants, shape, x, xt):
  """add(library, name, make, factorization, budget): appends to
  `variants` a layer `make()` builds, timed on `x` (JAX) or `xt` (torch)."""

  def add(library, name, make, factorization="dense", budget="dense"):
    row = {"section": "layers", "shape": shape, "library": library,
           "variant": name, "factorization": factorization,
           "budget": budget}

    def build():
      layer = make()
      torch_side = isinstance(layer, torch.nn.Module)
      row["params"] = (_torch_params(layer) if torch_side
                       else cj.count_params(layer))
      return (_torch_layer if torch_side else harness.layer_calls)(
          layer, xt if torch_side else x)

    variants.append(harness.Variant(row, build))

  return add


def _conv_variants(cin, cout, size, batch):
  shape = f"conv 3x3 {cin}->{cout} on {size}x{size}, batch {batch}"
  x = jax.random.normal(jax.random.key(0), (batch, size, size, cin))
  xt = torch.randn(batch, cin, size, size)
  rngs = nnx.Rngs(0)
  variants = []
  add = _adder(variants, shape, x, xt)
  add("PyTorch", "dense", lambda: torch.nn.Conv2d(cin, cout, 3, padding=1))
  add("JAX", "dense (XLA conv)", lambda: nnx.Conv(cin, cout, (3, 3),
                                                  rngs=rngs))
  add("JAX", "dense (patches_conv)", lambda: nnx.Conv(
      cin, cout, (3, 3), conv_general_dilated=patches_conv, rngs=rngs))
  add("JAX", "dense (winograd_conv)", lambda: nnx.Conv(
      cin, cout, (3, 3), conv_general_dilated=winograd_conv, rngs=rngs))
  for budget, fraction in FRACTIONS.items():
    for factorization, layer in OURS.items():
      paths = [("auto", {}), ("factorized", {}), ("reconstructed", {}),
               ("reconstructed, patches_conv",
                {"conv_general_dilated": patches_conv})]
      if factorization != "CP":  # CP's factorized path has no dense conv
        paths.append(("factorized, patches_conv",
                      {"conv_general_dilated": patches_conv}))
      for name, kwargs in paths:
        add("cpac_jax", name, lambda layer=layer, fraction=fraction,
            name=name, kwargs=kwargs: layer(
                cin, cout, (3, 3), rank=fraction,
                implementation=name.split(",")[0], rngs=rngs, **kwargs),
            factorization, budget)
      for path in ("factorized", "reconstructed"):
        add("tltorch", path, lambda fraction=fraction, path=path,
            factorization=factorization: tltorch.FactorizedConv(
                cin, cout, 3, order=2, padding=1, bias=True,
                factorization=PEER[factorization], rank=fraction,
                implementation=path), factorization, budget)
  return variants


def _ttl_variants(batch=128):
  shape = f"TTL dense 784->300, batch {batch}"
  x = jax.random.normal(jax.random.key(0), (batch, 784))
  xt = torch.randn(batch, 784)
  rngs = nnx.Rngs(0)
  variants = []
  add = _adder(variants, shape, x, xt)
  add("PyTorch", "dense", lambda: torch.nn.Linear(784, 300))
  add("JAX", "dense", lambda: nnx.Linear(784, 300, rngs=rngs))
  budgets = [*FRACTIONS.items(), ("(5, 5, 10), paper", (5, 5, 10))]
  for budget, rank in budgets:
    for path in ("auto", "factorized", "reconstructed"):
      add("cpac_jax", path, lambda rank=rank, path=path: cj.layers.TuckerDense(
          (28, 28), (300,), rank=rank, implementation=path, rngs=rngs),
          "Tucker", budget)
    # tltorch's tensor is (out modes, in modes): rank (10, 5, 5) is ours
    # (5, 5, 10).
    peer_rank = (rank[2], *rank[:2]) if isinstance(rank, tuple) else rank
    for path in ("factorized", "reconstructed"):
      add("tltorch", path, lambda rank=peer_rank, path=path:
          tltorch.FactorizedLinear((28, 28), (300,), factorization="tucker",
                                   rank=rank, implementation=path),
          "Tucker", budget)
  for budget, fraction in FRACTIONS.items():
    for path in ("auto", "factorized", "reconstructed"):
      add("cpac_jax", path, lambda fraction=fraction, path=path:
          cj.layers.TTDense((4, 7, 4, 7), (3, 4, 5, 5), rank=fraction,
                            implementation=path, rngs=rngs), "TT", budget)
    for path in ("factorized", "reconstructed"):
      add("tltorch", path, lambda fraction=fraction, path=path:
          tltorch.FactorizedLinear((4, 7, 4, 7), (3, 4, 5, 5),
                                   factorization="blocktt", rank=fraction,
                                   implementation=path), "TT", budget)
  return variants


# -- training steps ----------------------------------------------------------

def _tltorch_cp(path):
  return lambda cin, cout: tltorch.FactorizedConv(
      cin, cout, 3, order=2, factorization="cp", rank=5, implementation=path)


def _cpac_variants(batch):
  shape = f"CPAC-CNN 2 convs, MNIST, batch {batch}"
  x = jax.random.normal(jax.random.key(1), (batch, 28, 28, 1))
  y = jax.random.randint(jax.random.key(2), (batch,), 0, 10)
  xt, yt = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
  nets = [
      ("PyTorch", "dense", "dense", lambda: torch_models.CPACNet(
          lambda i, o: torch.nn.Conv2d(i, o, 3, bias=False))),
      *(("tltorch", path, "CP", lambda path=path: torch_models.CPACNet(
          _tltorch_cp(path))) for path in ("factorized", "reconstructed")),
      *((("PyTorch", "official code's CP conv", "CP",
           lambda: torch_models.CPACNet(torch_models.OfficialCPConv)),)
        if batch == 1 else ()),
      ("cpac_jax", "dense", "dense", lambda: cj.models.CPACNet(
          factorization="dense", rngs=nnx.Rngs(0))),
      *(("cpac_jax", path, "CP", lambda path=path: cj.models.CPACNet(
          factorization="cp", rank=5, implementation=path,
          rngs=nnx.Rngs(0))) for path in ("auto", "factorized",
                                          "reconstructed"))]
  return _step_variants("cpac", shape, nets, (x, y), (xt, yt), 60000 // batch)


def _vgg16_variants(batch=32):
  shape = f"VGG-16, 32x32x3, batch {batch}"
  x = jax.random.normal(jax.random.key(1), (batch, 32, 32, 3))
  y = jax.random.randint(jax.random.key(2), (batch,), 0, 10)
  xt, yt = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))

  def ours(factorization, rank):
    config = ml_collections.ConfigDict({
        "name": "vgg16", "factorization": factorization, "rank": rank,
        "implementation": "auto"})
    return cj.models.build(config, (32, 32, 3), 10, nnx.Rngs(0))

  def peer_conv(path):
    def conv(cin, cout, index):
      if index == 0:
        return torch.nn.Conv2d(cin, cout, 3, padding=1)
      return tltorch.FactorizedConv(cin, cout, 3, order=2, padding=1,
                                    bias=True, factorization="cp", rank=0.1,
                                    implementation=path)
    return conv

  nets = [
      ("PyTorch", "dense", "dense", lambda: torch_models.vgg16(
          lambda i, o, _: torch.nn.Conv2d(i, o, 3, padding=1))),
      *(("tltorch", path, "CP", lambda path=path: torch_models.vgg16(
          peer_conv(path))) for path in ("factorized", "reconstructed")),
      ("cpac_jax", "dense", "dense", lambda: ours("dense", 4)),
      ("cpac_jax", "auto", "CP", lambda: ours("cp", 0.1)),
      ("cpac_jax", "auto", "Tucker (TTL classifier)",
       lambda: ours("tucker", 4))]
  return _step_variants("vgg16", shape, nets, (x, y), (xt, yt), None)


def _step_variants(section, shape, nets, batch, torch_batch, steps_per_epoch):
  variants = []
  for library, name, factorization, make in nets:
    row = {"section": section, "shape": shape, "library": library,
           "variant": name, "factorization": factorization,
           "budget": "rank 5" if section == "cpac" and factorization == "CP"
           else "-", "steps_per_epoch": steps_per_epoch}

    def build(row=row, make=make):
      net = make()
      if isinstance(net, torch.nn.Module):
        row["params"] = _torch_params(net)
        return _torch_step(net, *torch_batch)
      row["params"] = cj.count_params(net)
      return _jax_step(net, *batch)

    variants.append(harness.Variant(row, build))
  return variants


# -- the report --------------------------------------------------------------

def _fastest_dense(group):
  """The dense row of `group` with the least fwd+bwd time."""
  return min((r for r in group if r["factorization"] == "dense"),
             key=lambda r: r.get("backward_ms", math.inf))


def _cell(row, kind):
  return f"{row[kind + '_ms']:.2f}" if f"{kind}_ms" in row else "-"


def _layer_tables(rows):
  lines = []
  for shape in dict.fromkeys(r["shape"] for r in rows):
    group = [r for r in rows if r["shape"] == shape]
    torch_dense = next(r for r in group if r["library"] == "PyTorch")
    fastest = _fastest_dense(group)
    lines += [f"### {shape}", "",
              f"Fastest dense (fwd+bwd): {fastest['library']} "
              f"{fastest['variant']}, {fastest['backward_ms']:.2f} ms.", "",
              "| layer | budget | library | path | params | compression "
              "| forward ms | fwd+bwd ms | fwd+bwd vs PyTorch dense "
              "| vs fastest dense |", "|---|---|---|---|---|---|---|---|---|"
              "---|"]
    for r in group:
      if "error" in r:
        timing = f"- | {r['error']} | | |"
      else:
        timing = (f"{_cell(r, 'forward')} | {_cell(r, 'backward')} | "
                  f"{r['backward_ms'] / torch_dense['backward_ms']:.2f}x | "
                  f"{r['backward_ms'] / fastest['backward_ms']:.2f}x |")
      params = r.get("params")
      lines.append(
          f"| {r['factorization']} | {r['budget']} | {r['library']} "
          f"| {r['variant']} | {f'{params:,}' if params else '-'} | "
          + (f"{torch_dense['params'] / params:.1f}x" if params else "-")
          + f" | {timing}")
    lines.append("")
  return lines


def _target_rows(rows) -> list[dict]:
  """One entry per (shape, layer, budget) of the layer rows: `auto`, our
  fastest path, tltorch's fastest path (None where none runs), the fastest
  dense, and whether the target is met: at 2x `auto` within 1.1x of the
  fastest dense (fwd+bwd), at 10x and 66x no slower than tltorch's
  fastest path."""
  found = []
  for shape in dict.fromkeys(r["shape"] for r in rows):
    group = [r for r in rows if r["shape"] == shape and "backward_ms" in r]
    dense = _fastest_dense(group)
    keys = dict.fromkeys((r["factorization"], r["budget"]) for r in group
                         if r["factorization"] != "dense")
    for factorization, budget in keys:
      mine = [r for r in group if (r["factorization"], r["budget"]) == (
          factorization, budget)]
      ours = [r for r in mine if r["library"] == "cpac_jax"]
      auto = next(r for r in ours if r["variant"] == "auto")
      peer = min((r for r in mine if r["library"] == "tltorch"),
                 key=lambda r: r["backward_ms"], default=None)
      vs_dense = auto["backward_ms"] / dense["backward_ms"]
      met = (vs_dense <= 1.1 if budget == "2x" else
             peer is None or auto["backward_ms"] <= peer["backward_ms"])
      found.append({"shape": shape, "factorization": factorization,
                    "budget": budget, "auto": auto, "peer": peer,
                    "best": min(ours, key=lambda r: r["backward_ms"]),
                    "vs_dense": vs_dense, "met": met})
  return found


def _targets(rows):
  """The layer targets, one line per (shape, layer, budget)."""
  lines = ["## Against the targets", "",
           "At 10x and 66x: our fastest path and `auto` against tltorch's "
           "fastest path (fwd+bwd). At 2x: `auto` against the fastest dense "
           "of the same shape (target: within 1.1x).", "",
           "| shape | layer | budget | ours auto ms | our fastest path | "
           "tltorch fastest path | auto / tltorch | fastest / tltorch | "
           "auto / fastest dense | met |", "|---|---|---|---|---|---|---|"
           "---|---|---|"]
  targets = _target_rows(rows)
  for t in targets:
    auto, best, peer = t["auto"], t["best"], t["peer"]
    peer_cell = (f"{peer['variant']} {peer['backward_ms']:.2f} ms | "
                 f"{auto['backward_ms'] / peer['backward_ms']:.2f}x | "
                 f"{best['backward_ms'] / peer['backward_ms']:.2f}x"
                 if peer else "none runs | - | -")
    lines.append(
        f"| {t['shape']} | {t['factorization']} | {t['budget']} "
        f"| {auto['backward_ms']:.2f} | {best['variant']} "
        f"{best['backward_ms']:.2f} ms | {peer_cell} | {t['vs_dense']:.2f}x "
        f"| {'yes' if t['met'] else '**no**'} |")
  met = sum(t["met"] for t in targets)
  lines += ["", f"Met in {met} of {len(targets)}.", ""]
  return lines


def _restated_2x(rows, out: Path) -> list[str]:
  """The 2x target as restated: `auto` within 1.1x of the fastest of its
  layer's own paths, and no slower than PyTorch's dense layer of the shape
  except where macs_2x.json (if made) counts every path of the layer above
  the fastest dense's multiply-adds."""
  path = out / "macs_2x.json"
  if not path.exists():
    return []
  best_macs = {(r["shape"], r["layer"]): min(r["factorized"],
                                             r["reconstructed"])
               for r in json.loads(path.read_text())["rows"]}
  lines = ["## The 2x target, restated", "",
           "At 2x: `auto` within 1.1x of the fastest of the layer's own "
           "paths (fwd+bwd), and no slower than PyTorch's dense layer of "
           "the shape, unless every path needs more multiply-adds than the "
           "fastest dense ([macs_2x.md](macs_2x.md)).", "",
           "| shape | layer | auto ms | our fastest path | auto / fastest "
           "path | PyTorch dense ms | auto / PyTorch dense | best path's "
           "multiply-adds / fastest dense's | met |",
           "|---|---|---|---|---|---|---|---|---|"]
  targets = [t for t in _target_rows(rows) if t["budget"] == "2x"]
  met = 0
  for t in targets:
    auto, best = t["auto"], t["best"]
    torch_dense = next(r for r in rows if r["shape"] == t["shape"]
                       and r["library"] == "PyTorch")
    macs = best_macs.get((t["shape"], t["factorization"]))
    own = auto["backward_ms"] / best["backward_ms"]
    vs_torch = auto["backward_ms"] / torch_dense["backward_ms"]
    ok = own <= 1.1 and (vs_torch <= 1 or (macs is not None and macs > 1))
    met += ok
    lines.append(
        f"| {t['shape']} | {t['factorization']} | "
        f"{auto['backward_ms']:.2f} | {best['variant']} "
        f"{best['backward_ms']:.2f} ms | {own:.2f}x | "
        f"{torch_dense['backward_ms']:.2f} | {vs_torch:.2f}x | "
        + (f"{macs:.2f}x" if macs is not None else "not counted")
        + f" | {'yes' if ok else '**no**'} |")
  return lines + ["", f"Met in {met} of {len(targets)}.", ""]


def _step_table(rows, title):
  lines = [f"## {title}", "",
           "| net | library | path | params | step ms | vs PyTorch dense "
           "| epoch of 60,000 (s, steps only) |", "|---|---|---|---|---|---"
           "|---|"]
  for shape in dict.fromkeys(r["shape"] for r in rows):
    group = [r for r in rows if r["shape"] == shape]
    base = next(r for r in group if r["library"] == "PyTorch")
    for r in group:
      net = f"{shape}, {r['factorization']} {r['budget']}".replace(" -", "")
      if "error" in r:
        lines.append(f"| {net} | {r['library']} | {r['variant']} | - | "
                     f"{r['error']} | | |")
        continue
      epoch = (f"{r['step_ms'] * r['steps_per_epoch'] / 1e3:.0f}"
               if r.get("steps_per_epoch") else "-")
      lines.append(
          f"| {net} | {r['library']} | {r['variant']} | {r['params']:,} "
          f"| {r['step_ms']:.2f} | {r['step_ms'] / base['step_ms']:.2f}x "
          f"| {epoch} |")
  return lines + [""]


def _faithful_sweep(rows, out: Path) -> list[str]:
  """What the batch-1 step times imply for the faithful CPAC sweep, beside
  the sweep command's own wall time (sweep.json, if measured)."""
  rows = [r for r in rows if r.get("steps_per_epoch") == 60000
          and "step_ms" in r]
  if not rows:
    return []
  models_, epochs = 13, 10
  lines = [f"The faithful CPAC MNIST sweep ({models_} models, {epochs} epochs "
           "of 60,000 steps at batch 1) at these step times (rank 5 standing "
           "for each CP rank), one step per call as the official loop runs "
           "it, steps only: "
           + "; ".join(f"{r['library']} {r['variant']} "
                       f"({r['factorization']}) "
                       f"{r['step_ms'] * 60000 * epochs * models_ / 6e4:.0f}"
                       " min" for r in rows) + "."]
  sweep = out / "sweep.json"
  if sweep.exists():
    timed = [r for r in json.loads(sweep.read_text())["rows"]
             if "runs" in r and r["mode"] != "reference"]
    fastest = min(timed, key=lambda r: r["seconds"])
    lines[0] += (
        f" The sweep command itself, which fuses steps into one call "
        f"(`steps_per_call`) and trains a seed's models as one program "
        f"(`--vectorize`), took {fastest['seconds']:.0f} s for its "
        f"{len(fastest['runs'])} runs in its fastest mode "
        f"({fastest['mode']}), start-up and evaluation included (sweep.md, "
        "measured separately).")
  return lines + [""]


def settings() -> dict:
  return {"sections": _SECTIONS.value, "threads": _THREADS.value,
          "slow_s": _SLOW.value, "host_memory": _HOST_MEMORY.value}


def prepare() -> None:
  global torch, tltorch, torch_models
  try:
    import tltorch
    import torch

    from cpac_jax.benchmarks import torch_models
  except ImportError as error:
    raise app.UsageError(f"the peer benchmark needs the bench extra "
                         f'({error}): pip install -e ".[bench]"') from error
  unknown = set(_SECTIONS.value) - set(SECTIONS)
  if unknown:
    raise app.UsageError(f"--sections: unknown {sorted(unknown)}; valid: "
                         f"{', '.join(SECTIONS)}")
  if _HOST_MEMORY.value == "huge_pages":
    if not cj.process.huge_pages():
      raise app.UsageError("--host_memory=huge_pages needs glibc 2.35 or "
                           "later and transparent huge pages on; rerun with "
                           "--host_memory=reuse")
    cj.process.restart_with_huge_pages()
  if (_HOST_MEMORY.value != "default"
      and not cj.process.reuse_host_memory()):
    raise app.UsageError(f"--host_memory={_HOST_MEMORY.value} needs glibc's "
                         "malloc; rerun with --host_memory=default")
  torch.set_num_threads(_THREADS.value)
  torch.manual_seed(0)


def rows(repeats: int) -> list[dict]:
  def measure(variants):
    return harness.measure(variants, repeats, slow_s=_SLOW.value)

  rows = []
  if "layers" in _SECTIONS.value:
    for variants in (_conv_variants(64, 64, 32, 32),
                     _conv_variants(256, 256, 16, 32), _ttl_variants()):
      rows += measure(variants)
  if "cpac" in _SECTIONS.value:
    for batch in (1, 64):
      rows += measure(_cpac_variants(batch))
  if "vgg16" in _SECTIONS.value:
    rows += measure(_vgg16_variants())
  return rows


def render(run: dict) -> str:
  """peers.md from a run (as peers.json holds it)."""
  meta, rows = run["meta"], run["rows"]
  memory = {
      "reuse": "glibc's malloc keeps freed blocks for the next call "
               "(`process.reuse_host_memory`; for PyTorch too, the same "
               "process). ",
      "huge_pages": "glibc's malloc keeps freed blocks for the next call "
                    "and backs what it maps with transparent huge pages "
                    "(`process.reuse_host_memory`, "
                    "`process.restart_with_huge_pages`: as cpac_jax's "
                    "command lines run; for PyTorch too, the same "
                    "process). ",
      "default": "glibc's malloc at its defaults. "}[meta["host_memory"]]
  lines = ["# cpac_jax against PyTorch and TensorLy-Torch", "",
           f"{harness.describe(meta)} PyTorch on {meta['threads']} threads, "
           "XLA on all; the variants of one shape are a group. Our layers and "
           "steps compiled as cpac_jax's "
           "training compiles its steps (YNNPACK fusions off on the CPU). "
           + memory
           + "Every ratio names its dense baseline, measured in this run.",
           ""]
  layer_rows = [r for r in rows if r["section"] == "layers"]
  if layer_rows:
    lines += _targets(layer_rows) + _restated_2x(layer_rows,
                                                 harness.out_dir())
    lines += ["## Each layer", ""] + _layer_tables(layer_rows)
  for section, title in (("cpac", "CPAC-CNN training step (one call per "
                          "step, as the official batch-1 loop)"),
                         ("vgg16", "VGG-16 training step")):
    section_rows = [r for r in rows if r["section"] == section]
    if section_rows:
      lines += _step_table(section_rows, title)
    if section == "cpac":
      lines += _faithful_sweep(section_rows, harness.out_dir())
  return "\n".join(lines)


def _ratio(a: dict, b: dict, kind: str) -> str:
  return (f"{a[kind + '_ms'] / b[kind + '_ms']:.2f}x ({a[kind + '_ms']:.3g} "
          f"against {b[kind + '_ms']:.3g} ms)")


def summary(run: dict) -> str:
  """The run's headline figures, for the benchmarks' README."""
  rows = run["rows"]
  lines = []
  layer_rows = [r for r in rows if r["section"] == "layers"]
  if layer_rows:
    targets = _target_rows(layer_rows)
    high = [t for t in targets if t["budget"] != "2x" and t["peer"]]
    ratios = [t["auto"]["backward_ms"] / t["peer"]["backward_ms"]
              for t in high]
    low = [t for t in targets if t["budget"] == "2x"]
    lines.append(
        f"- Layers at 10x and 66x: `auto` no slower than tltorch's fastest "
        f"path in {sum(t['met'] for t in high)} of {len(high)} rows "
        f"({min(ratios):.2f}x-{max(ratios):.2f}x its forward+backward "
        f"time). At 2x, `auto` within 1.1x of the fastest dense of its "
        f"shape in {sum(t['met'] for t in low)} of {len(low)} "
        f"(misses: {', '.join(_miss(t) for t in low if not t['met'])}).")
    dense = []
    for shape in dict.fromkeys(r["shape"] for r in layer_rows):
      group = [r for r in layer_rows if r["shape"] == shape]
      torch_dense = next(r for r in group if r["library"] == "PyTorch")
      fastest = _fastest_dense(group)
      dense.append(f"{shape}: {fastest['library']} {fastest['variant']}, "
                   + _ratio(fastest, torch_dense, "backward"))
    lines.append("- Fastest dense layer of each shape against PyTorch's "
                 "(forward+backward): " + "; ".join(dense) + ".")
  for section, name in (("vgg16", "VGG-16 training step"),
                        ("cpac", "CPAC-CNN training step")):
    for shape in dict.fromkeys(r["shape"] for r in rows
                               if r["section"] == section):
      group = [r for r in rows if r["shape"] == shape and "step_ms" in r]
      base = next(r for r in group if r["library"] == "PyTorch"
                  and r["variant"] == "dense")
      others = [f"{r['library']} {r['variant']} ({r['factorization']}) "
                + _ratio(r, base, "step") for r in group if r is not base]
      lines.append(f"- {name}, {shape}, against PyTorch's dense step: "
                   + "; ".join(others) + ".")
      peer = min((r for r in group if r["library"] == "tltorch"),
                 key=lambda r: r["step_ms"], default=None)
      ours = next((r for r in group if r["library"] == "cpac_jax"
                   and r["variant"] == "auto" and r["factorization"] == "CP"),
                  None)
      if peer and ours:
        lines.append(f"  Our CP step (auto) against tltorch's fastest "
                     f"({peer['variant']}): " + _ratio(ours, peer, "step")
                     + ".")
  return "\n".join(lines)


def _miss(target: dict) -> str:
  return (f"{target['shape']} {target['factorization']} "
          f"{target['vs_dense']:.2f}x")


if __name__ == "__main__":
  harness.main(sys.modules[__name__])
