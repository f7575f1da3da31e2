"""The Tucker Tensor Layer's product (TTL) as pure functions: forward and
multiply-adds."""

import itertools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from cpac_jax import tensor
from cpac_jax.functional.conv import pointwise
from cpac_jax.functional.implementation import choose

__all__ = ["batch_shape", "cheapest_order", "tucker_dense",
           "tucker_dense_flops"]


def cheapest_order(sizes: Sequence[int], ranks: Sequence[int],
                   rest: int) -> tuple[tuple[int, ...], int, int]:
  """The order of mode products (size_i -> rank_i, on a tensor of `rest`
  other entries) with the fewest multiply-adds, that count, and the entries
  of the products' results."""
  best = None
  for order in itertools.permutations(range(len(sizes))):
    current, cost, written = list(sizes), 0, 0
    for i in order:
      cost += rest * math.prod(current) * ranks[i]
      current[i] = ranks[i]
      written += rest * math.prod(current)
    if best is None or cost < best[1]:
      best = (order, cost, written)
  return best


def _plan(batch: int, in_shape: Sequence[int], out_shape: Sequence[int],
          rank: Sequence[int]):
  """Input-mode order, output-mode order and multiply-adds of each path."""
  num_in = len(in_shape)
  in_ranks, out_ranks = rank[:num_in], rank[num_in:]
  in_order, in_cost, in_written = cheapest_order(in_shape, in_ranks, batch)
  out_order, out_cost, out_written = cheapest_order(out_ranks, out_shape,
                                                    batch)
  core_cost = batch * math.prod(in_ranks) * math.prod(out_ranks)
  _, rebuild, _ = cheapest_order(rank, tuple(in_shape) + tuple(out_shape), 1)
  out_features = math.prod(out_shape)
  dense = batch * math.prod(in_shape) * out_features
  flops = {"factorized": in_cost + core_cost + out_cost,
           "reconstructed": dense + rebuild, "dense": dense,
           # everything written but the output
           "intermediates": (in_written + batch * math.prod(out_ranks)
                             + out_written - batch * out_features)}
  return in_order, out_order, flops


def batch_shape(input_shape: Sequence[int], in_shape: Sequence[int]
                ) -> tuple[tuple[int, ...], bool]:
  """The batch axes of an input (*batch, prod(in_shape)) or (*batch,
  *in_shape), and whether it is tensorized; ValueError if neither."""
  input_shape, in_shape = tuple(input_shape), tuple(in_shape)
  if input_shape[-len(in_shape):] == in_shape:
    return input_shape[:-len(in_shape)], True
  if input_shape[-1:] == (math.prod(in_shape),):
    return input_shape[:-1], False
  raise ValueError(
      f"input of shape {input_shape} fits neither (N, {math.prod(in_shape)}) "
      f"nor (N, *{in_shape})")


def tucker_dense_flops(input_shape: Sequence[int], in_shape: Sequence[int],
                       out_shape: Sequence[int], rank: Sequence[int]
                       ) -> dict[str, int]:
  """Multiply-adds of each path for an input (*batch, prod(in_shape)) or
  (*batch, *in_shape) through the Tucker weight of shape in_shape +
  out_shape and ranks `rank`, as `cp_conv_flops` counts them."""
  batch, _ = batch_shape(input_shape, in_shape)
  return _plan(math.prod(batch), in_shape, out_shape, rank)[2]


def tucker_dense(x: jax.Array, core: jax.Array, factors: Sequence[jax.Array],
                 in_shape: Sequence[int], *, implementation: str = "auto",
                 precision=None) -> jax.Array:
  """(N, prod(in_shape)) -> (N, prod(out_shape)), no bias, through the
  weight core x_0 U_0 ... x_{M-1} U_{M-1} of shape in_shape + out_shape
  (`factors` U_n of shape (I_n, R_n)), unfolded to a matrix.

  "factorized": project the tensorized input onto the input factors (one
  mode product each, in the cheapest order), contract with the core, expand
  with the output factors; no dense weight is formed. "reconstructed":
  rebuild the weight, one matmul. "auto": the cheaper (`choose`).
  """
  in_shape = tuple(in_shape)
  num_in = len(in_shape)
  out_shape = tuple(f.shape[0] for f in factors[num_in:])
  rank = [f.shape[1] for f in factors]
  batch = x.shape[0]
  in_order, out_order, flops = _plan(batch, in_shape, out_shape, rank)
  if choose(implementation, flops) == "reconstructed":
    weight = tensor.tucker_to_tensor((core, factors))
    weight = jnp.reshape(weight, (math.prod(in_shape), math.prod(out_shape)))
    return jnp.dot(x, weight, precision=precision)
  h = jnp.reshape(x, (batch,) + in_shape)
  for i in in_order:  # (N, *in_shape) -> (N, *in_ranks)
    h = _mode_product(h, factors[i], i + 1, precision)
  out_ranks = core.shape[num_in:]
  h = pointwise(jnp.reshape(h, (batch, -1)),
                jnp.reshape(core, (-1, math.prod(out_ranks))),
                precision=precision)
  h = jnp.reshape(h, (batch,) + out_ranks)
  for i in out_order:  # (N, *out_ranks) -> (N, *out_shape)
    h = _mode_product(h, factors[num_in + i].T, i + 1, precision)
  return jnp.reshape(h, (batch, math.prod(out_shape)))


def _mode_product(h: jax.Array, matrix: jax.Array, axis: int,
                  precision) -> jax.Array:
  """h's `axis` (size I) times matrix (I, J): the axis moved last, one 2-D
  matmul, moved back. XLA merges the transposes of successive products;
  `tensor.mode_dot`'s tensordot with the matrix first took 1.1x-1.35x this
  forward+backward time in the TTL layer 784->300 (batch 128, ranks
  (17, 17, 187) to (1, 1, 11); a probe on 2 cores, not committed)."""
  h = pointwise(jnp.moveaxis(h, axis, -1), matrix, precision=precision)
  return jnp.moveaxis(h, -1, axis)
