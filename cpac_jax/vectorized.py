"""How runs share one compiled program: grouped, padded and stacked.

A rank sweep at batch size 1 is many tiny models, each too small to keep a
CPU (let alone an accelerator) busy. `cpac_jax.train.train_runs` trains
runs that differ only in seed, rank and factorization side by side, every
compiled step updating all of them; this module lays out their state.

- Runs of one seed see the same examples in the same order, so each
  (factorization, seed) group is one `jax.vmap` over its members with the
  batch shared; the groups of the other seeds and factorizations are further
  branches of the same step.
- Members of a group differ in rank, so their parameters differ in shape:
  each is initialised exactly as its own run would be, then zero-padded to
  the group's widest member (the largest rank) and stacked. A zero CP
  component (a zero column in every factor) or a zero Tucker core slice
  with zero factor columns adds nothing to the layer and gets a zero
  gradient (each factor's gradient is a product of the other factors' or
  the core's zeros), so Adam, SGD and weight decay leave it at zero: every
  member computes what its separate run computes, up to the order of
  floating-point sums (tests/test_train.py checks this against separate
  runs).

A run trained alone is a group of one, unstacked: its model's state as is.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from cpac_jax import data, models
from cpac_jax.config import build_model, differing_fields

__all__ = ["Group", "check_together", "make_groups", "split_modes"]

# Fields in which runs trained together may differ: each member is
# initialised as its own run would be, so the init may differ too.
MAY_DIFFER = ("seed", "model.rank", "model.factorization", "model.init",
              "name")


def check_together(configs: Sequence[ml_collections.ConfigDict]) -> None:
  """Raise ValueError unless `configs` differ only in `MAY_DIFFER`."""
  for config in configs[1:]:
    differ = differing_fields(configs[0], config, ignore=MAY_DIFFER)
    if differ:
      raise ValueError(
          f"runs trained together may differ only in {', '.join(MAY_DIFFER)}"
          f"; these differ in {', '.join(differ)}: run them in separate "
          "sweeps, or without --vectorize")


class Group:
  """The runs `indices` of `configs`, of one factorization and seed, their
  parameters drawn from `init_key`: stacked along a leading axis when
  `stacked`, else (one run) as the model holds them.

  Attributes:
    graphdef, eval_graphdef: the (widest) model in train and eval mode.
    params, rest: the state, stacked and zero-padded if `stacked`.
    counts: each member's parameter counts (`models.parameter_counts`).
    dense_twins: each member's dense twin, abstract.
  """

  def __init__(self, configs: Sequence[ml_collections.ConfigDict],
               indices: Sequence[int], info: data.DatasetInfo,
               init_key: jax.Array, stacked: bool):
    if not stacked and len(indices) != 1:
      raise ValueError(f"an unstacked group holds one run, not {len(indices)}")
    self.indices, self.stacked = list(indices), stacked
    build = lambda i: build_model(configs[i], info, init_key)
    abstract = [nnx.eval_shape(lambda i=i: build(i)) for i in indices]
    self.counts, self.dense_twins = [], []
    for i, model in zip(indices, abstract):
      dense = configs[i].copy_and_resolve_references()
      dense.model.factorization = "dense"
      self.dense_twins.append(nnx.eval_shape(
          lambda c=dense: build_model(c, info)))
      self.counts.append(models.parameter_counts(model,
                                                 self.dense_twins[-1]))
    widest = max(range(len(abstract)), key=lambda m: self.counts[m]["params"])
    self.graphdef, self.eval_graphdef, target = split_modes(abstract[widest])
    if not stacked:
      _, _, (self.params, self.rest) = split_modes(build(indices[0]))
      return
    leaves = jax.tree.leaves(target)
    self.shapes = []
    for i, model in zip(indices, abstract):
      own = jax.tree.leaves(split_modes(model)[2])
      if len(own) != len(leaves) or not all(
          a.ndim == t.ndim and all(n <= m for n, m in zip(a.shape, t.shape))
          for a, t in zip(own, leaves)):
        raise ValueError(
            f"run {i} ({configs[i].model.factorization}, rank "
            f"{configs[i].model.rank}) has parameters that don't fit inside "
            f"the widest run's (rank {configs[indices[widest]].model.rank}) "
            "when zero-padded; train it without --vectorize")
      self.shapes.append([a.shape for a in own])

    @jax.jit
    def init():
      padded = [jax.tree.map(
          lambda a, t: jnp.pad(a, [(0, m - n) for n, m in zip(a.shape,
                                                              t.shape)]),
          split_modes(build(i))[2], target) for i in indices]
      return jax.tree.map(lambda *a: jnp.stack(a), *padded)

    # One compilation for all members (run op by op, each rank's shapes
    # would compile every op anew), unoptimised: optimising a dozen models'
    # random initialisers takes XLA seconds and saves nothing.
    self.params, self.rest = init.lower().compile(
        {"xla_backend_optimization_level": 0})()

  def with_model(self, model: nnx.Module) -> None:
    """Holds `model` (built and initialised) as the group's one run instead:
    its graphs, state and parameter counts (against the run's dense twin)."""
    if self.stacked:
      raise ValueError("a stacked group's runs keep the models they were "
                       "built with")
    self.counts = [models.parameter_counts(model, self.dense_twins[0])]
    self.graphdef, self.eval_graphdef, (self.params, self.rest) = (
        split_modes(model))

  def unpadded(self, member: int, params, rest):
    """Member `member`'s (params, rest), cut back to its own shapes (cut on
    the host: as jax ops, each member's shapes would compile a program of
    their own)."""
    if not self.stacked:
      return params, rest
    leaves, treedef = jax.tree.flatten((params, rest))
    return treedef.unflatten([
        jnp.asarray(np.asarray(a)[member][tuple(slice(0, n) for n in shape)])
        for a, shape in zip(leaves, self.shapes[member], strict=True)])


def split_modes(model: nnx.Module):
  """(train graphdef, eval graphdef, (params, rest)) of `model`; `rest` is
  its non-parameter state (batch-norm statistics)."""
  model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  model.eval()
  eval_graphdef = nnx.split(model, nnx.Param, ...)[0]
  return graphdef, eval_graphdef, (params, rest)


def make_groups(configs: Sequence[ml_collections.ConfigDict],
                info: data.DatasetInfo, init_keys: dict, stacked: bool
                ) -> list[Group]:
  """`configs` grouped by (factorization, seed), in order of first
  appearance; `init_keys` maps each seed to its initialisation key."""
  members = {}
  for i, config in enumerate(configs):
    members.setdefault((config.model.factorization, config.seed), []).append(i)
  return [Group(configs, indices, info, init_keys[seed], stacked)
          for (_, seed), indices in members.items()]
