"""Tensor trains (TT) and TT-matrices: reconstruction and TT-SVD.

A tensor train over modes (I_0, ..., I_{d-1}) is a list of cores G_k of
shape (r_k, I_k, r_{k+1}) with r_0 = r_d = 1:
X[i_0, ..., i_{d-1}] = G_0[:, i_0, :] @ G_1[:, i_1, :] @ ... @ G_{d-1}[:, i_{d-1}, :].
A TT-matrix holds a matrix whose rows are tensorized as in_shape and its
columns as out_shape, with as many modes each; core k, of shape
(r_k, in_k, out_k, r_{k+1}), pairs input mode k with output mode k
(Novikov et al., 2015). Conventions follow TensorLy's `tt_to_tensor`,
`tensor_train`, `tt_matrix_to_tensor` and `tensor_train_matrix`, so results
can be checked against them.
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from cpac_jax.tensor import base
from cpac_jax.tensor.rank import RankSpec, tt_rank

__all__ = ["tt_matrix_svd", "tt_matrix_to_tensor", "tt_svd", "tt_to_tensor"]


def tt_to_tensor(cores: Sequence[jax.Array]) -> jax.Array:
  """The full tensor (I_0, ..., I_{d-1}) a tensor train holds."""
  shape = tuple(core.shape[1] for core in cores)
  full = jnp.reshape(cores[0], (-1, cores[0].shape[-1]))
  for core in cores[1:]:
    full = full @ jnp.reshape(core, (core.shape[0], -1))
    full = jnp.reshape(full, (-1, core.shape[-1]))
  return jnp.reshape(full, shape)


@base.in_float32
def tt_svd(tensor: jax.Array, rank: RankSpec) -> list[jax.Array]:
  """The tensor train of `tensor` by TT-SVD (Oseledets, 2011): sweep the
  modes left to right, keeping the leading r_{k+1} singular vectors of each
  unfolding. Quasi-optimal: the squared error is at most the sum of the
  squared truncation errors of the unfoldings. Exact at the largest ranks
  (`cpac_jax.tensor.tt_max_ranks`). A rank above what its bond can hold
  after the ranks before it (r_{k+1} > r_k I_k) gets zero slices.

  Args:
    tensor: the tensor to decompose.
    rank: a TT rank spec (`cpac_jax.tensor.tt_rank`).

  Returns:
    The cores (r_k, I_k, r_{k+1}).
  """
  ranks = tt_rank(tensor.shape, rank, layer="tt_svd")
  shape = tensor.shape
  cores = []
  rest = jnp.asarray(tensor)
  for k, size in enumerate(shape[:-1]):
    matrix = jnp.reshape(rest, (ranks[k] * size, -1))
    u, s, vt = jnp.linalg.svd(matrix, full_matrices=False)
    r = ranks[k + 1]
    missing = max(0, r - s.shape[0])  # a rank above what the bond can hold
    u = jnp.pad(u[:, :r], ((0, 0), (0, missing)))
    rest = jnp.pad(s[:r, None] * vt[:r], ((0, missing), (0, 0)))
    cores.append(jnp.reshape(u, (ranks[k], size, r)))
  cores.append(jnp.reshape(rest, (ranks[-2], shape[-1], 1)))
  return cores


def _interleaved(in_shape: Sequence[int], out_shape: Sequence[int]):
  """The axes of an in_shape + out_shape tensor in the order (in_0, out_0,
  in_1, out_1, ...)."""
  d = len(in_shape)
  return [axis for k in range(d) for axis in (k, d + k)]


def tt_matrix_to_tensor(cores: Sequence[jax.Array]) -> jax.Array:
  """The tensor in_shape + out_shape a TT-matrix with cores (r_k, in_k,
  out_k, r_{k+1}) holds; reshape it to (prod(in_shape), prod(out_shape)) for
  the matrix."""
  in_shape = tuple(core.shape[1] for core in cores)
  out_shape = tuple(core.shape[2] for core in cores)
  merged = [jnp.reshape(c, (c.shape[0], -1, c.shape[-1])) for c in cores]
  full = jnp.reshape(tt_to_tensor(merged),
                     [s for pair in zip(in_shape, out_shape) for s in pair])
  order = _interleaved(in_shape, out_shape)
  return jnp.transpose(full, [order.index(axis)
                              for axis in range(2 * len(cores))])


@base.in_float32
def tt_matrix_svd(tensor: jax.Array, in_shape: Sequence[int],
                  out_shape: Sequence[int], rank: RankSpec
                  ) -> list[jax.Array]:
  """The TT-matrix of a matrix (prod(in_shape), prod(out_shape)), or of its
  tensor in_shape + out_shape, by TT-SVD of the tensor whose mode k merges
  input mode k with output mode k; `rank` is a TT rank spec over those
  merged modes (in_k * out_k).

  Returns:
    The cores (r_k, in_k, out_k, r_{k+1}).
  """
  in_shape, out_shape = tuple(in_shape), tuple(out_shape)
  if len(in_shape) != len(out_shape):
    raise ValueError(
        f"tt_matrix_svd: in_shape {in_shape} and out_shape {out_shape} must "
        "have as many modes each")
  if math.prod(tensor.shape) != math.prod(in_shape) * math.prod(out_shape):
    raise ValueError(
        f"tt_matrix_svd: a tensor of shape {tensor.shape} is not a "
        f"{math.prod(in_shape)} x {math.prod(out_shape)} matrix")
  tensor = jnp.reshape(tensor, in_shape + out_shape)
  merged = jnp.transpose(tensor, _interleaved(in_shape, out_shape))
  merged = jnp.reshape(merged, [i * o for i, o in zip(in_shape, out_shape)])
  return [jnp.reshape(core, (core.shape[0], i, o, core.shape[-1]))
          for core, i, o in zip(tt_svd(merged, rank), in_shape, out_shape)]
