"""Tensor-train layers as pure functions: the TT conv and the TT-matrix
dense layer, forward and multiply-adds; the TT-matrix layer's plans (which
cores to merge, which way to contract) and their counts."""

import itertools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from cpac_jax import tensor
from cpac_jax.functional.conv import (
  ConvGeometry,
  conv,
  dense_conv_flops,
  lowering_saving,
  output_shape,
  pointwise,
)
from cpac_jax.functional.implementation import (
  INTERMEDIATE_COST,
  check_implementation,
  choose,
)
from cpac_jax.functional.tucker_dense import batch_shape

__all__ = ["TTDensePlan", "tt_conv", "tt_conv_flops", "tt_conv_kernel",
           "tt_dense", "tt_dense_by_plan", "tt_dense_flops", "tt_dense_plan",
           "tt_dense_plans", "tt_rebuild_flops"]


def tt_rebuild_flops(shape: Sequence[int], ranks: Sequence[int]) -> int:
  """Multiply-adds of `cpac_jax.tensor.tt_to_tensor` for cores over the
  modes `shape` with `ranks`: the left-to-right chain of products."""
  return sum(math.prod(shape[:k]) * ranks[k] * shape[k] * ranks[k + 1]
             for k in range(1, len(shape)))


def tt_conv_kernel(cores: Sequence[jax.Array]) -> jax.Array:
  """The kernel (*kernel_size, Cin, Cout) of a TT conv whose cores run over
  (Cin, *kernel_size, Cout)."""
  full = tensor.tt_to_tensor(cores)
  d = full.ndim
  return jnp.transpose(full, tuple(range(1, d - 1)) + (0, d - 1))


def tt_conv_flops(input_shape: Sequence[int], out_features: int,
                  ranks: Sequence[int], geometry: ConvGeometry,
                  conv_general_dilated=None) -> dict[str, int]:
  """Multiply-adds of each path of a TT conv with cores over (Cin,
  *kernel_size, Cout) and TT ranks `ranks` (boundary 1s included) on an
  input (*batch, *spatial, Cin), as `cp_conv_flops` counts them."""
  in_features = input_shape[-1]
  batch, spatial, _, out = output_shape(input_shape, geometry)
  inner = ranks[1:-1]
  factorized = batch * math.prod(spatial) * in_features * inner[0]
  intermediates = batch * math.prod(spatial) * inner[0]
  sizes = list(spatial)
  for axis, kernel in enumerate(geometry.kernel_size):
    sizes[axis] = out[axis]
    factorized += (batch * math.prod(sizes) * kernel * inner[axis]
                   * inner[axis + 1])
    intermediates += batch * math.prod(sizes) * inner[axis + 1]
  factorized += batch * math.prod(out) * inner[-1] * out_features
  dense = dense_conv_flops(batch, out, geometry.kernel_size, in_features,
                           out_features)
  shape = (in_features, *geometry.kernel_size, out_features)
  return {"factorized": factorized,
          "reconstructed": dense + tt_rebuild_flops(shape, ranks),
          "dense": dense, "intermediates": intermediates,
          "reconstructed_saved": lowering_saving(
              dense, (batch, *spatial, in_features), geometry,
              conv_general_dilated)}


def tt_conv(x: jax.Array, cores: Sequence[jax.Array], geometry: ConvGeometry,
            *, implementation: str = "auto", precision=None,
            conv_general_dilated=None) -> jax.Array:
  """(N, *spatial, Cin) -> (N, *spatial', Cout), no bias, for the kernel
  held as a tensor train with cores over (Cin, *kernel_size, Cout):
  G_in (1, Cin, r_1), G_i (r_i, k_i, r_{i+1}) per spatial axis, G_out (r_d,
  Cout, 1).

  "factorized": a 1x1 conv to r_1 channels, a 1-D conv r_i -> r_{i+1} along
  each spatial axis (a dense conv whose kernel spans one axis), a 1x1 conv
  to Cout; no dense kernel is formed. "reconstructed": rebuild the kernel,
  one dense conv. "auto": the cheaper (`choose`). `conv_general_dilated`:
  the dense convs' lowering (None: `conv.conv_lowering` of their input
  channels).

  Example:
    >>> import jax.numpy as jnp
    >>> geometry = ConvGeometry((3, 3), (1, 1), "SAME", (1, 1))
    >>> cores = [jnp.ones((1, 4, 2)), jnp.ones((2, 3, 2)),
    ...          jnp.ones((2, 3, 2)), jnp.ones((2, 5, 1))]
    >>> tt_conv(jnp.ones((1, 6, 6, 4)), cores, geometry).shape
    (1, 6, 6, 5)
  """
  ranks = [core.shape[0] for core in cores] + [1]
  flops = tt_conv_flops(x.shape, cores[-1].shape[1], ranks, geometry,
                        conv_general_dilated)
  _, _, pads, _ = output_shape(x.shape, geometry)
  if choose(implementation, flops) == "reconstructed":
    return conv(x, tt_conv_kernel(cores), geometry.strides, pads,
                geometry.dilation, precision=precision,
                conv_general_dilated=conv_general_dilated)
  num_spatial = len(geometry.kernel_size)
  h = pointwise(x, cores[0][0], precision=precision)
  for axis, core in enumerate(cores[1:-1]):
    one = [1] * num_spatial
    strides, dilation = list(one), list(one)
    strides[axis] = geometry.strides[axis]
    dilation[axis] = geometry.dilation[axis]
    axis_pads = [(0, 0)] * num_spatial
    axis_pads[axis] = pads[axis]
    kernel_shape = list(one)
    kernel_shape[axis] = core.shape[1]
    kernel = jnp.reshape(jnp.transpose(core, (1, 0, 2)),
                         kernel_shape + [core.shape[0], core.shape[2]])
    h = conv(h, kernel, strides, axis_pads, dilation, precision=precision,
             conv_general_dilated=conv_general_dilated)
  return pointwise(h, cores[-1][..., 0], precision=precision)


_DIRECTIONS = ("left_to_right", "right_to_left")


class TTDensePlan(NamedTuple):
  """One way to run a TT-matrix layer's forward, and what it costs.

  The d cores are cut into contiguous `groups` (core indices, e.g. ((0,),
  (1, 2), (3,))); each group of several cores is first merged into one
  core (r_k, prod(in), prod(out), r_l) by the chain product of its cores,
  left to right (work on the weights alone, whatever the batch); the
  tensorized input is then contracted with the groups' cores one at a time
  in `direction`, "left_to_right" or "right_to_left", each turning its
  input modes into its output modes. One group is the rebuilt weight and
  one matmul ("reconstructed"); d groups left to right is the
  core-by-core contraction of Novikov et al. (2015).

  Attributes:
    groups: the core indices of each group, in order.
    direction: "left_to_right" or "right_to_left".
    merge: multiply-adds merging the groups' cores.
    contraction: multiply-adds contracting the input with the groups.
    intermediates: elements of the activations written between groups
      (the output not included), as `choose` charges them.
  """

  groups: tuple[tuple[int, ...], ...]
  direction: str
  merge: int
  contraction: int
  intermediates: int

  @property
  def macs(self) -> int:
    """Multiply-adds in all: merge and contraction."""
    return self.merge + self.contraction

  @property
  def cost(self) -> int:
    """The price `choose` puts on a path: multiply-adds plus
    `INTERMEDIATE_COST` per element of the intermediates."""
    return self.macs + INTERMEDIATE_COST * self.intermediates


def _partitions(num_cores: int) -> list[tuple[tuple[int, ...], ...]]:
  """Every cut of cores 0..num_cores-1 into contiguous groups, 2^(d-1) of
  them: one group first, one core a group last."""
  partitions = []
  for cuts in itertools.product((False, True), repeat=num_cores - 1):
    groups, start = [], 0
    for stop, cut in enumerate(cuts, 1):
      if cut:
        groups.append(tuple(range(start, stop)))
        start = stop
    groups.append(tuple(range(start, num_cores)))
    partitions.append(tuple(groups))
  return partitions


def _merge_macs(group: Sequence[int], in_shape: Sequence[int],
                out_shape: Sequence[int], ranks: Sequence[int]) -> int:
  """Multiply-adds of the chain product, left to right, of the cores in
  `group`: `tt_rebuild_flops` with the group's left rank in place of 1."""
  merged = [in_shape[k] * out_shape[k] for k in group]
  return sum(ranks[group[0]] * math.prod(merged[:j]) * ranks[group[j]]
             * merged[j] * ranks[group[j] + 1] for j in range(1, len(group)))


def _count_plan(batch: int, in_shape: Sequence[int],
                out_shape: Sequence[int], ranks: Sequence[int],
                groups: tuple[tuple[int, ...], ...], direction: str
                ) -> TTDensePlan:
  """The counts of the plan `groups`, `direction` for a batch of `batch`."""
  ins = [math.prod(in_shape[k] for k in group) for group in groups]
  outs = [math.prod(out_shape[k] for k in group) for group in groups]
  merge = contraction = intermediates = 0
  for j, group in enumerate(groups):
    left, right = ranks[group[0]], ranks[group[-1] + 1]
    merge += _merge_macs(group, in_shape, out_shape, ranks)
    if direction == "left_to_right":  # outputs before j, inputs after j
      done, todo = math.prod(outs[:j]), math.prod(ins[j + 1:])
      written = batch * done * outs[j] * right * todo
    else:  # outputs after j, inputs before j
      done, todo = math.prod(outs[j + 1:]), math.prod(ins[:j])
      written = batch * todo * left * outs[j] * done
    contraction += batch * done * todo * left * ins[j] * outs[j] * right
    intermediates += written
  return TTDensePlan(groups, direction, merge, contraction,
                     intermediates - batch * math.prod(out_shape))


def tt_dense_plans(input_shape: Sequence[int], in_shape: Sequence[int],
                   out_shape: Sequence[int], ranks: Sequence[int]
                   ) -> list[TTDensePlan]:
  """Every plan (`TTDensePlan`) of a TT-matrix with TT ranks `ranks`
  (boundary 1s included) on an input (*batch, prod(in_shape)) or (*batch,
  *in_shape): each of the 2^(d-1) cuts of the d cores into contiguous
  groups, left to right then right to left; the one-group plans (the
  rebuilt weight, the same in either direction) first.

  Example:
    >>> plans = tt_dense_plans((8, 12), (4, 3), (5, 2), (1, 2, 1))
    >>> for plan in plans:
    ...   print(plan.groups, plan.direction, plan.merge, plan.contraction)
    ((0, 1),) left_to_right 240 960
    ((0, 1),) right_to_left 240 960
    ((0,), (1,)) left_to_right 0 1440
    ((0,), (1,)) right_to_left 0 1024
  """
  batch, _ = batch_shape(input_shape, in_shape)
  return [_count_plan(math.prod(batch), in_shape, out_shape, ranks, groups,
                      direction)
          for groups in _partitions(len(in_shape))
          for direction in _DIRECTIONS]


def tt_dense_plan(input_shape: Sequence[int], in_shape: Sequence[int],
                  out_shape: Sequence[int], ranks: Sequence[int],
                  implementation: str = "auto") -> TTDensePlan:
  """The plan `tt_dense` runs for `implementation`: "reconstructed", the
  one group (the rebuilt weight); "factorized", the cheapest plan (by
  `TTDensePlan.cost`) of two groups or more, so no dense weight is formed
  (a one-core TT-matrix has only the one group, its core the weight);
  "auto", the cheapest of all, the rebuilt weight where it ties, as
  `choose` resolves "auto".

  Example:
    >>> plan = tt_dense_plan((8, 12), (4, 3), (5, 2), (1, 2, 1),
    ...                      "factorized")
    >>> plan.groups, plan.direction, plan.macs, plan.intermediates
    (((0,), (1,)), 'right_to_left', 1024, 128)
  """
  check_implementation(implementation, "tt_dense_plan")
  plans = tt_dense_plans(input_shape, in_shape, out_shape, ranks)
  if implementation == "reconstructed":
    return plans[0]
  if implementation == "factorized":
    fewest = min(2, len(in_shape))
    plans = [plan for plan in plans if len(plan.groups) >= fewest]
  return min(plans, key=lambda plan: plan.cost)


def tt_dense_flops(input_shape: Sequence[int], in_shape: Sequence[int],
                   out_shape: Sequence[int], ranks: Sequence[int]
                   ) -> dict[str, int]:
  """Multiply-adds of each path for an input (*batch, prod(in_shape)) or
  (*batch, *in_shape) through a TT-matrix with TT ranks `ranks` (boundary
  1s included), as `cp_conv_flops` counts them: "factorized", the
  cheapest plan of two groups or more (`tt_dense_plan`; its merges
  included), and "intermediates", that plan's; "reconstructed", the
  rebuild and the matmul; "dense", the matmul alone."""
  factorized = tt_dense_plan(input_shape, in_shape, out_shape, ranks,
                             "factorized")
  rebuilt = tt_dense_plan(input_shape, in_shape, out_shape, ranks,
                          "reconstructed")
  return {"factorized": factorized.macs, "reconstructed": rebuilt.macs,
          "dense": rebuilt.contraction,
          "intermediates": factorized.intermediates}


def _merge_cores(cores: Sequence[jax.Array], precision) -> jax.Array:
  """The one core (r_k, prod(in), prod(out), r_l) of the consecutive
  `cores`: their chain product, left to right."""
  merged = cores[0]
  for core in cores[1:]:
    left, ins, outs, _ = merged.shape
    merged = jnp.reshape(
        jnp.einsum("aiob,bjps->aijops", merged, core, precision=precision),
        (left, ins * core.shape[1], outs * core.shape[2], core.shape[3]))
  return merged


def _left_to_right(x: jax.Array, cores: Sequence[jax.Array], precision
                   ) -> jax.Array:
  """(N, prod(ins)) -> (N, prod(outs)) through `cores` (r, in, out, s), one
  at a time from the first."""
  batch = x.shape[0]
  ins = [core.shape[1] for core in cores]
  outs = [core.shape[2] for core in cores]
  # h: (N, outputs so far, r, in of this core, inputs still to go)
  h = jnp.reshape(x, (batch, 1, 1, ins[0], math.prod(ins[1:])))
  for j, core in enumerate(cores):
    h = jnp.einsum("nprib,rios->nposb", h, core, precision=precision)
    if j + 1 < len(cores):
      h = jnp.reshape(h, (batch, math.prod(outs[:j + 1]), core.shape[3],
                          ins[j + 1], math.prod(ins[j + 2:])))
  return jnp.reshape(h, (batch, math.prod(outs)))


def _right_to_left(x: jax.Array, cores: Sequence[jax.Array], precision
                   ) -> jax.Array:
  """(N, prod(ins)) -> (N, prod(outs)) through `cores` (r, in, out, s), one
  at a time from the last."""
  batch = x.shape[0]
  ins = [core.shape[1] for core in cores]
  outs = [core.shape[2] for core in cores]
  # h: (N, inputs still to go, in of this core, s, outputs so far)
  h = jnp.reshape(x, (batch, math.prod(ins[:-1]), ins[-1], 1, 1))
  for j in reversed(range(len(cores))):
    h = jnp.einsum("nbisq,rios->nbroq", h, cores[j], precision=precision)
    if j > 0:
      h = jnp.reshape(h, (batch, math.prod(ins[:j - 1]), ins[j - 1],
                          cores[j].shape[0], math.prod(outs[j:])))
  return jnp.reshape(h, (batch, math.prod(outs)))


def _check_plan(groups: Sequence[Sequence[int]], direction: str,
                num_cores: int) -> None:
  """ValueError unless `groups` cut cores 0..num_cores-1 into contiguous
  groups, in order, and `direction` is "left_to_right" or
  "right_to_left"."""
  flat = [k for group in groups for k in group]
  if flat != list(range(num_cores)) or not all(groups):
    raise ValueError(
        f"tt_dense_by_plan: groups {tuple(map(tuple, groups))} must cut the "
        f"{num_cores} cores 0..{num_cores - 1} into non-empty contiguous "
        "groups, in order")
  if direction not in _DIRECTIONS:
    raise ValueError(f"tt_dense_by_plan: direction {direction!r} is not one "
                     f"of {_DIRECTIONS}")


def tt_dense_by_plan(x: jax.Array, cores: Sequence[jax.Array],
                     groups: Sequence[Sequence[int]], direction: str, *,
                     precision=None) -> jax.Array:
  """(N, prod(in_shape)) -> (N, prod(out_shape)), no bias, through the
  TT-matrix with cores (r_k, in_k, out_k, r_{k+1}), by the plan `groups`,
  `direction` (`TTDensePlan`): each group's cores merged into one, then
  the input contracted with the merged cores in `direction`; one group is
  one matmul with the rebuilt weight.

  Example:
    >>> import jax.numpy as jnp
    >>> cores = [jnp.ones((1, 3, 2, 2)), jnp.ones((2, 4, 5, 1))]
    >>> tt_dense_by_plan(jnp.ones((8, 12)), cores, [(0,), (1,)],
    ...                  "right_to_left").shape
    (8, 10)
  """
  _check_plan(groups, direction, len(cores))
  merged = [_merge_cores([cores[k] for k in group], precision)
            for group in groups]
  if len(merged) == 1:
    weight = merged[0]
    return jnp.dot(x, jnp.reshape(weight, weight.shape[1:3]),
                   precision=precision)
  contract = _left_to_right if direction == "left_to_right" else (
      _right_to_left)
  return contract(x, merged, precision)


def tt_dense(x: jax.Array, cores: Sequence[jax.Array], *,
             implementation: str = "auto", precision=None) -> jax.Array:
  """(N, prod(in_shape)) -> (N, prod(out_shape)), no bias, through the
  TT-matrix with cores (r_k, in_k, out_k, r_{k+1}), by the plan
  `tt_dense_plan` picks for `implementation` (`tt_dense_by_plan` runs it).

  "factorized": the cheapest plan of two groups of cores or more: merge
  the cores of each group, then contract the tensorized input with one
  merged core at a time, left to right or right to left, each turning its
  input modes into its output modes; no dense weight is formed.
  "reconstructed": rebuild the weight, one matmul. "auto": the cheapest
  plan of all, priced as `choose` prices a path.

  Example:
    >>> import jax.numpy as jnp
    >>> cores = [jnp.ones((1, 4, 2, 3)), jnp.ones((3, 7, 5, 1))]
    >>> tt_dense(jnp.ones((6, 28)), cores, implementation="factorized")[0, 0]
    Array(84., dtype=float32)
  """
  in_shape = tuple(core.shape[1] for core in cores)
  out_shape = tuple(core.shape[2] for core in cores)
  ranks = [core.shape[0] for core in cores] + [1]
  plan = tt_dense_plan(x.shape, in_shape, out_shape, ranks, implementation)
  return tt_dense_by_plan(x, cores, plan.groups, plan.direction,
                          precision=precision)
