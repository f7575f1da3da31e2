"""Multiply-adds of the TT-matrix layer's contraction plans against the
dense matmul: what merging cores and contracting right to left saves.

  python -m cpac_jax.benchmarks.tt_plans

For each TTDense shape of the layers and peers benchmarks (784 as (4, 7,
4, 7) -> 300 as (3, 4, 5, 5), and 1024 as (4, 8, 4, 8) -> 512 as (4, 4, 4,
8), at their rank fractions) and the layers of Novikov et al. 2015,
"Tensorizing Neural Networks" (1024 -> 1024 as 4x4x4x4x4 by 4x4x4x4x4 at
TT ranks 2, 4 and 8; 784 -> 625 as (7, 4, 7, 4) -> (5, 5, 5, 5) at rank
16), at batch 1 and 128, from `cj.functional.tt_dense_plans`: the dense
matmul's multiply-adds; the old plan's (one core at a time, left to right,
what `TTDense`'s factorized path ran before it chose among plans); the
plan of fewest multiply-adds (merges included) and the one of fewest of
two groups or more (no dense weight formed), each named by its groups of
cores and its direction; and the plan `implementation="auto"` runs, the
cheapest by `choose`'s price (multiply-adds plus INTERMEDIATE_COST per
intermediate element). Counts only: no timing, the same on any machine.
Writes experiments/benchmarks/tt_plans.{md,json}.
"""

import math
import sys

import cpac_jax as cj
from cpac_jax.benchmarks import harness, layers

NAME, REPEATS, PACKAGES = "tt_plans", 1, ()
PROTOCOL = "counts from `cj.functional.tt_dense_plans`, nothing timed"
BATCHES = (1, 128)
NOVIKOV = "Novikov et al. 2015"
# (where the shape is used, in_shape, out_shape, TT rank spec): the
# TTDense layers of `layers.cases()` (and of `peers`, the 784 -> 300 ones)
# at `layers.FRACTIONS`, then the paper's.
SHAPES = [
    *(("The layers and peers benchmarks", (4, 7, 4, 7), (3, 4, 5, 5),
       fraction) for fraction in layers.FRACTIONS.values()),
    *(("The layers benchmark", (4, 8, 4, 8), (4, 4, 4, 8), fraction)
      for fraction in layers.FRACTIONS.values()),
    *((NOVIKOV, (4,) * 5, (4,) * 5, rank) for rank in (2, 4, 8)),
    (NOVIKOV, (7, 4, 7, 4), (5, 5, 5, 5), 16),
]


def prepare() -> None:
  """Nothing: counts need no process tuning."""


def _plan(plan: cj.functional.TTDensePlan) -> dict:
  return {"groups": [list(group) for group in plan.groups],
          "direction": plan.direction, "macs": plan.macs,
          "merge": plan.merge, "intermediates": plan.intermediates}


def count(source, in_shape, out_shape, rank, batch) -> dict:
  """A shape's counts at `batch`: the dense matmul's multiply-adds, the
  old plan's, and the fewest, fewest factorized and auto plans."""
  ranks = cj.tensor.tt_rank([i * o for i, o in zip(in_shape, out_shape)],
                            rank)
  shape = (batch, math.prod(in_shape))
  plans = cj.functional.tt_dense_plans(shape, in_shape, out_shape, ranks)
  old = next(plan for plan in plans if len(plan.groups) == len(in_shape)
             and plan.direction == "left_to_right")
  factorized = [plan for plan in plans if len(plan.groups) > 1]
  return {"source": source, "in_shape": in_shape, "out_shape": out_shape,
          "rank": rank, "ranks": ranks, "batch": batch,
          "dense": math.prod(shape) * math.prod(out_shape),
          "left_to_right": old.macs,
          "fewest": _plan(min(plans, key=lambda plan: plan.macs)),
          "fewest_factorized": _plan(min(factorized,
                                         key=lambda plan: plan.macs)),
          "auto": _plan(cj.functional.tt_dense_plan(shape, in_shape,
                                                    out_shape, ranks))}


def record() -> dict:
  """The price `auto` chose by, for the record (older records lack it:
  layers.UNRECORDED_INTERMEDIATE_COST)."""
  return {"intermediate_cost": cj.functional.INTERMEDIATE_COST}


def rows(repeats: int) -> list[dict]:
  del repeats  # nothing is timed
  return [count(*spec, batch) for spec in SHAPES for batch in BATCHES]


def plan_name(plan: dict) -> str:
  """A plan's groups of cores and direction, e.g. `(0 1)(2 3) R->L`."""
  groups = "".join(f"({' '.join(map(str, group))})"
                   for group in plan["groups"])
  if len(plan["groups"]) == 1:
    return f"{groups} rebuilt"
  arrow = "L->R" if plan["direction"] == "left_to_right" else "R->L"
  return f"{groups} {arrow}"


def shape_name(r: dict) -> str:
  dims = "x".join(map(str, r["in_shape"])), "x".join(map(str, r["out_shape"]))
  inner = r["ranks"][1:-1]
  ranks = (f"rank {inner[0]}" if len(set(inner)) == 1
           else f"ranks {tuple(inner)}")
  if isinstance(r["rank"], float):
    ranks += f" (fraction {r['rank']})"
  return (f"{math.prod(r['in_shape'])}->{math.prod(r['out_shape'])} as "
          f"{dims[0]} -> {dims[1]}, {ranks}")


def _gain(r: dict) -> float:
  """Multiply-adds of the old plan over the fewest factorized plan's."""
  return r["left_to_right"] / r["fewest_factorized"]["macs"]


def render(run: dict) -> str:
  """tt_plans.md from a run (as tt_plans.json holds it)."""
  cost = run["meta"].get("intermediate_cost",
                         layers.UNRECORDED_INTERMEDIATE_COST)
  lines = ["# TTDense contraction plans: multiply-adds against dense", "",
           f"{harness.describe(run['meta'])} Forward multiply-adds of a "
           "TT-matrix dense layer (`cj.functional.tt_dense_plans`; merges of "
           "cores included), each relative to the dense matmul of its shape "
           "and batch (batch x in x out), but *old / factorized*, the old "
           "plan's over the fewest factorized plan's. A plan cuts the cores "
           "(numbered from 0, input mode k paired with output mode k) into "
           "groups, merges each group's cores into one, and contracts the "
           "input with the groups left to right (L->R) or right to left "
           "(R->L); one group is the rebuilt weight and one matmul. *Old*: "
           "one core a group, left to right, the one plan TTDense's "
           "factorized path ran before it chose among plans. *Fewest*: the "
           "plan of fewest multiply-adds; *factorized*: of those of two "
           "groups or more (no dense weight formed). *auto*: the plan "
           "`implementation=\"auto\"` runs, the cheapest by `choose`'s "
           "price (multiply-adds plus INTERMEDIATE_COST = "
           f"{cost} per element of the "
           "activations written between groups). Ranks: the inner TT ranks, "
           "and the fraction of the dense weights they resolve from "
           "(`cj.tensor.tt_rank`), where one was given."]
  for source in dict.fromkeys(r["source"] for r in run["rows"]):
    lines += ["", f"## {source}", "",
              "| shape | batch | dense M | old / dense | fewest: plan | "
              "fewest / dense | factorized: plan | factorized / dense | "
              "old / factorized | auto: plan | auto / dense |",
              "|---|---:|---:|---:|---|---:|---|---:|---:|---|---:|"]
    for r in (r for r in run["rows"] if r["source"] == source):
      fewest, factorized = r["fewest"], r["fewest_factorized"]
      lines.append(
          f"| {shape_name(r)} | {r['batch']} | {r['dense'] / 1e6:,.3g} | "
          f"{r['left_to_right'] / r['dense']:.3f}x | {plan_name(fewest)} | "
          f"{fewest['macs'] / r['dense']:.3f}x | {plan_name(factorized)} | "
          f"{factorized['macs'] / r['dense']:.3f}x | {_gain(r):.2f}x | "
          f"{plan_name(r['auto'])} | {r['auto']['macs'] / r['dense']:.3f}x |")
  return "\n".join(lines) + "\n"


def summary(run: dict) -> str:
  """The run's headline figures, for the benchmarks' README."""
  rows_ = run["rows"]

  def under(macs) -> int:
    return sum(macs(r) < r["dense"] for r in rows_)

  def largest(rows) -> str:
    return "; ".join(
        f"{shape_name(r)}, batch {r['batch']}: {_gain(r):.2f}x "
        f"({plan_name(r['fewest_factorized'])})"
        for r in sorted(rows, key=_gain, reverse=True)[:3])

  return (f"- Of {len(rows_)} shapes and batches, the plan of fewest "
          "multiply-adds needs fewer than the dense matmul in "
          f"{under(lambda r: r['fewest']['macs'])}, the fewest factorized "
          f"plan in {under(lambda r: r['fewest_factorized']['macs'])}, the "
          "old plan (one core at a time, left to right) in "
          f"{under(lambda r: r['left_to_right'])}.\n"
          "- Largest savings of the fewest factorized plan over the old "
          f"plan: {largest(rows_)}.\n"
          "- The same, where that plan needs fewer than the dense matmul: "
          + largest([r for r in rows_ if r["fewest_factorized"]["macs"]
                     < r["dense"]]) + ".")


if __name__ == "__main__":
  harness.main(sys.modules[__name__])
