"""Initialisers of factors and cores, scaled so that the weight a layer
represents has the mean square of Flax's default `lecun_normal` init."""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def fixed_norm(key: jax.Array, shape: Sequence[int], mean_square: float,
               axis=None, dtype=jnp.float32) -> jax.Array:
  """Normal entries rescaled so the mean square along `axis` (all entries by
  default) is exactly `mean_square`: a random direction of fixed length."""
  x = jax.random.normal(key, tuple(shape), jnp.float32)
  x *= jnp.sqrt(mean_square / jnp.mean(x**2, axis=axis, keepdims=True))
  return x.astype(dtype)


def cp_factors(key: jax.Array, shape: Sequence[int], rank: int,
               fan_in: int, dtype) -> list[jax.Array]:
  """Factors (I_n, R) of a CP tensor whose entries have mean square
  1 / fan_in: every column has mean square (1 / (fan_in R))^(1/M), so no
  rank-1 term starts out dominating or vanishing."""
  mean_square = (1.0 / (fan_in * rank)) ** (1 / len(shape))
  keys = jax.random.split(key, len(shape))
  return [fixed_norm(k, (size, rank), mean_square, axis=0, dtype=dtype)
          for k, size in zip(keys, shape)]


def tucker(key: jax.Array, shape: Sequence[int], ranks: Sequence[int],
           modes: Sequence[int], fan_in: int, dtype):
  """Core and factors of a Tucker tensor whose entries have mean square
  exactly 1 / fan_in: factors with orthonormal columns preserve the norm, so
  the core gets the whole tensor's sum of squares."""
  core_shape = list(shape)
  for r, m in zip(ranks, modes):
    core_shape[m] = r
  keys = jax.random.split(key, len(modes) + 1)
  mean_square = math.prod(shape) / math.prod(core_shape) / fan_in
  core = fixed_norm(keys[0], core_shape, mean_square, dtype=dtype)
  orthogonal = nnx.initializers.orthogonal()
  # in float32: no QR in half precision
  factors = [orthogonal(k, (shape[m], r), jnp.float32).astype(dtype)
             for k, r, m in zip(keys[1:], ranks, modes)]
  return core, factors


def tt_cores(key: jax.Array, core_shapes: Sequence[Sequence[int]],
             fan_in: int, dtype) -> list[jax.Array]:
  """Cores of a tensor train (or TT-matrix) whose entries have mean square
  1 / fan_in: an entry sums prod(inner ranks) products of one entry per
  core, so each core gets mean square (1 / (fan_in prod(inner ranks)))^(1/d).
  """
  inner = math.prod(shape[0] for shape in core_shapes[1:])
  mean_square = (1.0 / (fan_in * inner)) ** (1 / len(core_shapes))
  keys = jax.random.split(key, len(core_shapes))
  return [fixed_norm(k, shape, mean_square, dtype=dtype)
          for k, shape in zip(keys, core_shapes)]
