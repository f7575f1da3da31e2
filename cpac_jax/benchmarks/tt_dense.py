"""Time of the TT-matrix dense layer against the dense layer of its shape,
measured in one run, beside the multiply-adds `tt_plans` counts.

  python -m cpac_jax.benchmarks.tt_dense [--repeats=30] [--render_only]

For each shape and batch of `tt_plans` (the layers and peers benchmarks'
TTDense shapes at their rank fractions, and the layers of Novikov et al.
2015, at batch 1 and 128): `nnx.Linear` of the same size, `TTDense` with
`implementation="auto"`, and, where auto runs another plan, the TTDense
run by the plan of fewest multiply-adds (`cj.functional.tt_dense_by_plan`);
forward and forward+backward (the gradient with respect to the
parameters), timed by the harness's protocol (`harness.measure`), relative
to the dense layer. The target each auto row is held to: faster than the
dense layer, forward and forward+backward, where the plan of fewest
multiply-adds needs fewer than the dense matmul; elsewhere within SLACK
times the dense layer's time times that plan's multiply-add ratio (the
forward count, for both). Writes experiments/benchmarks/tt_dense.{md,json}.
"""

import math
import statistics
import sys

import jax
from flax import nnx

import cpac_jax as cj
from cpac_jax.benchmarks import harness, tt_plans

NAME, REPEATS, PACKAGES = "tt_dense", 30, ()
SLACK = 1.2
KINDS = {"forward": "forward", "backward": "fwd+bwd"}


class _Planned(nnx.Module):
  """`layer` (a TTDense) run by one plan: `groups` of cores, `direction`."""

  def __init__(self, layer: cj.layers.TTDense, groups, direction: str):
    self.layer = layer
    self.groups = tuple(map(tuple, groups))
    self.direction = direction

  def __call__(self, x: jax.Array) -> jax.Array:
    y = cj.functional.tt_dense_by_plan(
        x, [core[...] for core in self.layer.cores], self.groups,
        self.direction)
    return y if self.layer.bias is None else y + self.layer.bias[...]


def _variants(counts: dict) -> list[tuple[str, nnx.Module]]:
  rngs = nnx.Rngs(0)
  n_in, n_out = (math.prod(counts[k]) for k in ("in_shape", "out_shape"))
  layer = cj.layers.TTDense(counts["in_shape"], counts["out_shape"],
                            rank=counts["rank"], rngs=rngs)
  found = [("dense", nnx.Linear(n_in, n_out, rngs=rngs)),
           ("TTDense auto", layer)]
  fewest = counts["fewest"]
  if tt_plans.plan_name(fewest) != tt_plans.plan_name(counts["auto"]):
    found.append(("TTDense fewest plan",
                  _Planned(layer, fewest["groups"], fewest["direction"])))
  return found


def target(row: dict) -> float:
  """The most an auto row's time may be, relative to the dense layer's:
  below 1 where the fewest plan needs fewer multiply-adds (strictly: 1 is
  a miss), else SLACK times that plan's ratio."""
  ratio = row["fewest_vs_dense_macs"]
  return 1.0 if ratio < 1 else SLACK * ratio


def met(row: dict, kind: str) -> bool:
  """Whether an auto row's `kind` time is within its target (a row that
  failed is not)."""
  if f"{kind}_vs_dense" not in row:
    return False
  limit, time = target(row), row[f"{kind}_vs_dense"]
  return time < limit if row["fewest_vs_dense_macs"] < 1 else time <= limit


def rows(repeats: int) -> list[dict]:
  found = []
  for spec in tt_plans.SHAPES:
    for batch in tt_plans.BATCHES:
      counts = tt_plans.count(*spec, batch)
      x = jax.random.normal(jax.random.key(0),
                            (batch, math.prod(counts["in_shape"])))
      facts = {"source": counts["source"], "shape": tt_plans.shape_name(counts),
               "batch": batch,
               "fewest_plan": tt_plans.plan_name(counts["fewest"]),
               "fewest_vs_dense_macs": counts["fewest"]["macs"]
               / counts["dense"],
               "auto_plan": tt_plans.plan_name(counts["auto"]),
               "auto_vs_dense_macs": counts["auto"]["macs"] / counts["dense"]}
      measured = harness.measure(
          [harness.Variant({**facts, "variant": name},
                           lambda layer=layer, x=x: harness.layer_calls(
                               layer, x))
           for name, layer in _variants(counts)], repeats)
      dense = next(r for r in measured if r["variant"] == "dense")
      for row in measured:
        for kind in KINDS:
          if f"{kind}_ms" in row and f"{kind}_ms" in dense:
            row[f"{kind}_vs_dense"] = row[f"{kind}_ms"] / dense[f"{kind}_ms"]
      found += measured
  return found


def _autos(rows_: list[dict]) -> list[dict]:
  return [r for r in rows_ if r["variant"] == "TTDense auto"]


def render(run: dict) -> str:
  """tt_dense.md from a run (as tt_dense.json holds it)."""
  lines = ["# TTDense against the dense layer: time beside multiply-adds", "",
           f"{harness.describe(run['meta'])} Times relative to `nnx.Linear` "
           "of the same size in the same run (forward; fwd+bwd: the "
           "gradient with respect to the parameters). Plans as in "
           "[tt_plans.md](tt_plans.md): *fewest*, the plan of fewest "
           "multiply-adds; *auto*, the one `implementation=\"auto\"` runs; "
           "*fewest plan* rows run the fewest plan where auto runs another. "
           "*Target* (auto rows): under 1.00x where the fewest plan needs "
           "fewer multiply-adds than the dense matmul, else at most "
           f"{SLACK} times the fewest plan's multiply-add ratio (its forward "
           "count, for both columns).", ""]
  for source in dict.fromkeys(r["source"] for r in run["rows"]):
    lines += [f"## {source}", "",
              "| shape | batch | variant | fewest: plan, MACs / dense | "
              "auto: plan, MACs / dense | forward | fwd+bwd | target | met "
              "(forward, fwd+bwd) |", "|---|---:|---|---|---|---:|---:|---:|"
              "---|"]
    for r in (r for r in run["rows"] if r["source"] == source):
      auto = r["variant"] == "TTDense auto"
      lines.append(
          f"| {r['shape']} | {r['batch']} | {r['variant']} | "
          f"{r['fewest_plan']}, {r['fewest_vs_dense_macs']:.3f}x | "
          f"{r['auto_plan']}, {r['auto_vs_dense_macs']:.3f}x | " + " | ".join(
              f"{r[f'{kind}_vs_dense']:.2f}x" if f"{kind}_vs_dense" in r
              else f"failed: {r.get('error', 'dense failed')}"
              for kind in KINDS) + " | " + (
              f"{target(r):.2f}x | " + ", ".join(
                  "yes" if met(r, kind) else "no" for kind in KINDS)
              if auto else "| ") + " |")
    lines.append("")
  return "\n".join(lines)


def summary(run: dict) -> str:
  """The run's headline figures, for the benchmarks' README."""
  autos = _autos(run["rows"])
  fewer = [r for r in autos if r["fewest_vs_dense_macs"] < 1]
  more = [r for r in autos if r["fewest_vs_dense_macs"] >= 1]

  def count(group, kind) -> str:
    return f"{sum(met(r, kind) for r in group)} of {len(group)}"

  def spread(group, kind) -> str:
    ratios = [r[f"{kind}_vs_dense"] / target(r) for r in group
              if f"{kind}_vs_dense" in r]
    return (f"median {statistics.median(ratios):.2f}x its target, worst "
            f"{max(ratios):.2f}x") if ratios else "none"

  return (f"- `TTDense` auto against `nnx.Linear` of its size, at "
          f"{len(autos)} shapes and batches: where the plan of fewest "
          "multiply-adds needs fewer than the dense matmul, faster in "
          f"{count(fewer, 'forward')} forward and {count(fewer, 'backward')} "
          f"fwd+bwd; elsewhere within {SLACK}x the dense time times that "
          f"plan's multiply-add ratio in {count(more, 'forward')} forward "
          f"and {count(more, 'backward')} fwd+bwd.\n"
          f"- Time over target, forward: {spread(autos, 'forward')}; "
          f"fwd+bwd: {spread(autos, 'backward')}.")


if __name__ == "__main__":
  harness.main(sys.modules[__name__])
