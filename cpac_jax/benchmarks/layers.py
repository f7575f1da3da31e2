"""Forward and forward+backward time of the factorized layers against the
fastest dense Flax layer of the same shape, measured in one run.

  python -m cpac_jax.benchmarks.layers [--repeats=30] [--render_only]

Shapes: 3x3 convs 64->64 on 32x32 and 256->256 on 16x16 (batch 32), and
784->300 (batch 128), the shapes `auto`'s INTERMEDIATE_COST was fitted to;
ranks giving about 2x, 10x and 66x fewer parameters (rank fractions 0.5,
0.1, 0.015; the table gives each layer's resolved ranks), and the TTL
paper's TuckerDense (5, 5, 10), 66.63x; TTConv beside the CP and Tucker
convs, and TTDense (784 as (4, 7, 4, 7) -> 300 as (3, 4, 5, 5)) beside
TuckerDense. Then shapes the fit never saw, to
check `auto` on them: a 3x3 conv 32->128 on 28x28 (batch 16), a 5x5 conv
96->96 on 12x12 (batch 32), and 1024->512 as (32, 32)->(16, 32) (batch
64; TTDense (4, 8, 4, 8) -> (4, 4, 4, 8)). Every layer runs each
implementation (auto, factorized, reconstructed), timed by the
harness's protocol (`harness.measure`); times are
reported relative to the fastest dense layer of the shape (a conv's dense
layer runs on XLA's conv and, where `conv_lowering` picks another lowering
for the shape, through that too), with the multiply-adds each path needs,
so time and FLOPs can be set side by side. Every layer is compiled as
cpac_jax's training compiles its steps (`process.compiler_options`), freed
blocks kept for the next call (`process.reuse_host_memory`). Writes
experiments/benchmarks/layers.{md,json}.
"""

import math
import sys

import jax
from flax import nnx
from jax import lax

import cpac_jax as cj
from cpac_jax.benchmarks import harness
from cpac_jax.functional import INTERMEDIATE_COST, choose
from cpac_jax.functional.conv import WINOGRAD_COST, conv_lowering

NAME, REPEATS, PACKAGES = "layers", 30, ()
# The INTERMEDIATE_COST of the records made before they stated theirs.
UNRECORDED_INTERMEDIATE_COST = 275
# Rank fractions (their labels); the compression each gives is in the table.
FRACTIONS = {"f=0.5": 0.5, "f=0.1": 0.1, "f=0.015": 0.015}
IMPLEMENTATIONS = ("auto", "factorized", "reconstructed")


def conv_case(cin, cout, kernel, size, batch, rngs, fractions=FRACTIONS,
              implementations=IMPLEMENTATIONS):
  """The dense conv on XLA's conv (`nnx.Conv` as it comes) and, where
  `conv_lowering` picks another for this shape, through it too; CPConv,
  TuckerConv and TTConv at the rank `fractions` ({label: fraction}), each
  in `implementations`: (shape name, [(dense variant, layer), ...], input
  (batch, size, size, cin), [(variant, layer), ...])."""
  x = jax.random.normal(jax.random.key(0), (batch, size, size, cin))
  denses = [("dense", nnx.Conv(cin, cout, (kernel, kernel), rngs=rngs))]
  lowering = conv_lowering(cin, (size, size), (kernel, kernel), batch=batch)
  if lowering is not lax.conv_general_dilated:
    denses.append((f"dense ({lowering.__name__})", nnx.Conv(
        cin, cout, (kernel, kernel), conv_general_dilated=lowering,
        rngs=rngs)))
  variants = []
  for label, fraction in fractions.items():
    for implementation in implementations:
      for layer in (cj.layers.CPConv, cj.layers.TuckerConv,
                    cj.layers.TTConv):
        variants.append((f"{layer.__name__} {label} {implementation}", layer(
            cin, cout, (kernel, kernel), rank=fraction,
            implementation=implementation, rngs=rngs)))
  name = (f"conv {kernel}x{kernel} {cin}->{cout} on {size}x{size}, batch "
          f"{batch}")
  return name, denses, x, variants


def dense_case(in_shape, out_shape, batch, ranks, tt_shapes, rngs,
               fractions=FRACTIONS, implementations=IMPLEMENTATIONS,
               low_rank=False):
  """TuckerDense at the rank `fractions` ({label: fraction}) and at each
  of `ranks`, and TTDense on `tt_shapes` (in, out: as many modes each) at
  the rank fractions, and with `low_rank` LowRankDense at them too (the
  rank whose two factors hold that fraction of the weights), each in
  `implementations`: (shape name, [("dense", nnx.Linear)], input (batch,
  prod(in_shape)), [(variant, layer), ...])."""
  n_in, n_out = math.prod(in_shape), math.prod(out_shape)
  x = jax.random.normal(jax.random.key(0), (batch, n_in))
  denses = [("dense", nnx.Linear(n_in, n_out, rngs=rngs))]
  specs = [*fractions.items(),
           *((f"{'x'.join(map(str, r))} (paper)", r) for r in ranks)]
  variants = [(f"TuckerDense {label} {implementation}", cj.layers.TuckerDense(
      in_shape, out_shape, rank=rank, implementation=implementation,
      rngs=rngs)) for label, rank in specs for implementation in
      implementations]
  variants += [(f"TTDense {label} {implementation}", cj.layers.TTDense(
      *tt_shapes, rank=rank, implementation=implementation, rngs=rngs))
      for label, rank in fractions.items() for implementation in
      implementations]
  if low_rank:
    variants += [(f"LowRankDense {label} {implementation}",
                  cj.layers.LowRankDense(
                      in_shape, out_shape, rank=cj.tensor.cp_rank(
                          (n_in, n_out), fraction),
                      implementation=implementation, rngs=rngs))
                 for label, fraction in fractions.items()
                 for implementation in implementations]
  return f"dense {n_in}->{n_out}, batch {batch}", denses, x, variants


def cases(fitted_only: bool = False, batch: int | None = None,
          low_rank: bool = False):
  """(shape name, [(dense variant, layer), ...], input, [(variant,
  layer), ...], whether INTERMEDIATE_COST was fitted on this shape) of
  each shape; with `fitted_only`, of the shapes it was fitted on alone
  (the other shapes' layers are not built). `batch`: every shape's batch
  size (None: each its own, as above); `low_rank`: LowRankDense beside
  the dense shapes' TuckerDense and TTDense (`dense_case`)."""
  rngs = nnx.Rngs(0)

  def size(own: int) -> int:
    return own if batch is None else batch

  yield *conv_case(64, 64, 3, 32, size(32), rngs), True
  yield *conv_case(256, 256, 3, 16, size(32), rngs), True
  yield *dense_case((28, 28), (300,), size(128), [(5, 5, 10)],
                    ((4, 7, 4, 7), (3, 4, 5, 5)), rngs,
                    low_rank=low_rank), True
  if fitted_only:
    return
  yield *conv_case(32, 128, 3, 28, size(16), rngs), False
  yield *conv_case(96, 96, 5, 12, size(32), rngs), False
  yield *dense_case((32, 32), (16, 32), size(64), [],
                    ((4, 8, 4, 8), (4, 4, 4, 8)), rngs,
                    low_rank=low_rank), False


def _autos(rows, fitted: bool) -> list[tuple[dict, dict, str]]:
  """(auto row, {path: its twin row}, the faster path by fwd+bwd) for each
  layer of the shapes INTERMEDIATE_COST was (or, with not `fitted`,
  wasn't) fitted to."""
  by_name = {(r["shape"], r["variant"]): r for r in rows}
  found = []
  for r in rows:
    if r["auto_path"] and r["fitted"] == fitted:
      layer = r["variant"].removesuffix(" auto")
      twins = {path: by_name[(r["shape"], f"{layer} {path}")]
               for path in ("factorized", "reconstructed")}
      found.append((r, twins, min(twins, key=lambda path, twins=twins:
                                   twins[path]["backward_vs_dense"])))
  return found


def _within(row: dict) -> bool:
  """Whether `row` is within 1.1x of the fastest dense, both ways."""
  return max(row["forward_vs_dense"], row["backward_vs_dense"]) <= 1.1


def _auto_summary(meta, rows, fitted: bool) -> list[str]:
  """For each auto row (`_autos`): the path it took, the faster of the two
  by forward+backward time, and its time against the target (1.1x the
  fastest dense)."""
  title = ("on the shapes its cost was fitted to" if fitted else
           "on shapes its cost was not fitted to")
  lines = [f"## `auto` against the fastest dense layer, {title}", "",
           "`auto` picks by `cpac_jax.functional.choose`: "
           "multiply-adds, plus `INTERMEDIATE_COST` = "
           f"{meta.get('intermediate_cost', UNRECORDED_INTERMEDIATE_COST)} "
           "per entry of the "
           "factorized path's intermediates"
           + (f", less {1 - meta['winograd_cost']:.2f} of the multiply-adds "
              "of a conv `winograd_conv` runs" if "winograd_cost" in meta
              else "")
           + ". The target: never above 1.1x the fastest dense "
           "layer's time.", "",
           "| shape | layer | auto's path | faster path (fwd+bwd) | auto "
           "forward | auto fwd+bwd | best path fwd+bwd |",
           "|---|---|---|---|---|---|---|"]
  autos = _autos(rows, fitted)
  picked, total = sum(r["auto_path"] == f for r, _, f in autos), len(autos)
  misses = []
  for r, twins, faster in autos:
    layer = r["variant"].removesuffix(" auto")
    within = [path for path, twin in twins.items() if _within(twin)]
    if not _within(r):
      misses.append(
          f"- {layer}, {r['shape']}: "
          + (f"the {within[0]} path was within 1.1x. " if within else
             "neither path is within 1.1x. ") + "Factorized "
          f"{twins['factorized']['forward_vs_dense']:.2f}x / "
          f"{twins['factorized']['backward_vs_dense']:.2f}x the fastest "
          "dense's time "
          "(forward / fwd+bwd) for "
          f"{r['flops_vs_dense']['factorized']:.2f}x its multiply-adds; "
          f"reconstructed {twins['reconstructed']['forward_vs_dense']:.2f}x "
          f"/ {twins['reconstructed']['backward_vs_dense']:.2f}x for "
          f"{r['flops_vs_dense']['reconstructed']:.2f}x.")
    lines.append(
        f"| {r['shape']} | {layer} | {r['auto_path']} | {faster} "
        f"| {r['forward_vs_dense']:.2f}x | {r['backward_vs_dense']:.2f}x "
        f"| {twins[faster]['backward_vs_dense']:.2f}x |")
  lines += ["", f"`auto` took the faster path in {picked} of {total} layers "
            f"and stayed within 1.1x of the fastest dense (forward and "
            f"fwd+bwd) in "
            f"{total - len(misses)} of {total}.", ""]
  if misses:
    lines += ["Where it didn't, time and multiply-adds part ways:", "",
              *misses, ""]
  return lines


def record() -> dict:
  """The prices `auto` chose by, for the record (older records lack them:
  UNRECORDED_INTERMEDIATE_COST, no conv priced by its lowering)."""
  return {"intermediate_cost": INTERMEDIATE_COST,
          "winograd_cost": WINOGRAD_COST}


def rows(repeats: int, shapes=None) -> list[dict]:
  """The rows of `shapes` (default: every shape of `cases()`), each as
  `cases` yields it."""
  rows = []
  for shape, denses, x, variants, fitted in (cases() if shapes is None
                                             else shapes):
    measured = harness.measure(
        [harness.Variant({"shape": shape, "variant": name, "fitted": fitted},
                         lambda layer=layer, x=x: harness.layer_calls(layer, x))
         for name, layer in denses + variants], repeats)
    by_name = {row["variant"]: row for row in measured}
    # Every ratio is against the fastest dense of the shape (fwd+bwd).
    reference = by_name[min((name for name, _ in denses),
                            key=lambda name: by_name[name]["backward_ms"])]
    dense_params = cj.count_params(denses[0][1])
    for name, layer in denses + variants:
      row = by_name[name]
      flops = layer.flops(x.shape) if hasattr(layer, "flops") else {}
      row.update({
          "dense_reference": reference["variant"],
          "params": cj.count_params(layer),
          "compression": dense_params / cj.count_params(layer),
          "rank": getattr(layer, "rank", None),
          "forward_vs_dense": row["forward_ms"] / reference["forward_ms"],
          "backward_vs_dense": row["backward_ms"] / reference["backward_ms"],
          "flops_vs_dense": {k: flops[k] / flops["dense"]
                             for k in ("factorized", "reconstructed")
                             if k in flops},
          "auto_path": (choose("auto", flops) if name.endswith(" auto")
                        else None),
      })
      rows.append(row)
  return rows


def render(run: dict) -> str:
  """layers.md from a run (as layers.json holds it)."""
  meta, rows = run["meta"], run["rows"]
  lines = ["# Factorized layers against dense: time and multiply-adds", "",
           f"{harness.describe(meta)} Every layer compiled as "
           "cpac_jax's training compiles its steps "
           "(`process.compiler_options`), freed blocks kept for the next call "
           "(`process.reuse_host_memory`). Times are relative to the fastest "
           "dense layer of the same shape in the same run (forward+backward; "
           "named under each shape's heading: the dense conv on XLA's conv, "
           "or the same conv through the lowering `conv_lowering` picks), "
           "multiply-adds to the dense op's direct count.", ""]
  for shape in dict.fromkeys(r["shape"] for r in rows):
    group = [r for r in rows if r["shape"] == shape]
    lines += [f"## {shape}", "",
              f"Dense reference: `{group[0]['dense_reference']}`.", "",
              "| variant | rank | params | compression | forward time "
              "| fwd+bwd time | multiply-adds (factorized / reconstructed) |",
              "|---|---|---|---|---|---|---|"]
    for r in group:
      flops = r["flops_vs_dense"]
      flops_cell = (f"{flops['factorized']:.3f} / {flops['reconstructed']:.3f}"
                    if flops else "1")
      rank = r["rank"]  # a tuple of ranks comes back from JSON as a list
      rank = tuple(rank) if isinstance(rank, list) else rank or "-"
      lines.append(
          f"| {r['variant']} | {rank} | {r['params']:,} "
          f"| {r['compression']:.1f}x | {r['forward_vs_dense']:.2f}x "
          f"| {r['backward_vs_dense']:.2f}x | {flops_cell} |")
    lines.append("")
  lines += (_auto_summary(meta, rows, fitted=True)
            + _auto_summary(meta, rows, fitted=False))
  return "\n".join(lines)


def summary(run: dict) -> str:
  """The run's headline figures, for the benchmarks' README."""
  rows = run["rows"]
  lines = []
  for fitted, title in ((True, "the shapes its cost was fitted to"),
                        (False, "other shapes")):
    autos = _autos(rows, fitted)
    lines.append(
        f"- `auto` on {title}: took the faster path (fwd+bwd) in "
        f"{sum(r['auto_path'] == f for r, _, f in autos)} of {len(autos)} "
        f"layers, and was within 1.1x of the fastest dense (forward and "
        f"fwd+bwd) in {sum(_within(r) for r, _, _ in autos)}.")
  tt = [r for r in rows if r["variant"].startswith("TTDense")
        and not r["variant"].endswith(" auto")]
  best = {}
  for r in tt:
    key = (r["shape"], r["variant"].rsplit(" ", 1)[0])
    best[key] = min(best.get(key, math.inf), r["backward_vs_dense"])
  lines.append(f"- TTDense, its faster path against the dense layer "
               f"(fwd+bwd): {min(best.values()):.2f}x-"
               f"{max(best.values()):.2f}x over {len(best)} layers.")
  paper = [r for r in rows if "(paper)" in r["variant"]
           and r["variant"].endswith(" auto")]
  for r in paper:
    lines.append(f"- The TTL paper's TuckerDense {tuple(r['rank'])} "
                 f"({r['compression']:.2f}x fewer parameters, biases "
                 "included), `auto`: "
                 f"{r['forward_vs_dense']:.2f}x the dense layer's forward "
                 f"time, {r['backward_vs_dense']:.2f}x its fwd+bwd.")
  return "\n".join(lines)

if __name__ == "__main__":
  harness.main(sys.modules[__name__])
