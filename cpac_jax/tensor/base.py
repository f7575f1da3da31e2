"""Unfolding, folding and mode products: the algebra CP and Tucker share.

Conventions follow TensorLy, so results can be checked against it: the
mode-n unfolding of a tensor of shape (I_0, ..., I_{M-1}) moves axis n to the
front and reshapes to (I_n, prod of the others) in C order. With that order,
unfold(cp_to_tensor(A), n) = A_n @ khatri_rao(A_m for m != n).T and
unfold(tucker_to_tensor(G, U), n) = U_n @ unfold(G, n) @ kron(U_m, m != n).T.
"""

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

__all__ = [
    "fold",
    "in_float32",
    "khatri_rao",
    "kronecker",
    "mode_dot",
    "multi_mode_dot",
    "unfold",
]


def unfold(tensor: jax.Array, mode: int) -> jax.Array:
  """Mode-`mode` unfolding: (I_0, ..., I_{M-1}) -> (I_mode, prod of rest)."""
  return jnp.reshape(jnp.moveaxis(tensor, mode, 0), (tensor.shape[mode], -1))


def fold(matrix: jax.Array, mode: int, shape: Sequence[int]) -> jax.Array:
  """Inverse of `unfold`: (I_mode, prod of the rest) -> `shape`."""
  shape = tuple(shape)
  moved = (shape[mode],) + shape[:mode] + shape[mode + 1:]
  return jnp.moveaxis(jnp.reshape(matrix, moved), 0, mode)


def mode_dot(tensor: jax.Array, matrix: jax.Array, mode: int) -> jax.Array:
  """n-mode product tensor x_mode matrix: axis `mode` of size I becomes J.

  Args:
    tensor: (I_0, ..., I_mode, ..., I_{M-1}).
    matrix: (J, I_mode).
    mode: the axis to contract.

  Returns:
    (I_0, ..., J, ..., I_{M-1}).
  """
  if matrix.ndim != 2 or matrix.shape[1] != tensor.shape[mode]:
    raise ValueError(
        f"mode_dot: matrix of shape {matrix.shape} can't multiply mode "
        f"{mode} of a tensor of shape {tensor.shape}; expected "
        f"(J, {tensor.shape[mode]})")
  out = jnp.tensordot(matrix, tensor, axes=((1,), (mode,)))
  return jnp.moveaxis(out, 0, mode)


def multi_mode_dot(tensor: jax.Array, matrices: Sequence[jax.Array],
                   modes: Sequence[int] | None = None,
                   transpose: bool = False) -> jax.Array:
  """Successive mode products with `matrices` along `modes` (all by default).

  With `transpose=True` each matrix is used as matrix.T, which projects a
  tensor onto factor matrices of shape (I_n, R_n).
  """
  modes = range(len(matrices)) if modes is None else modes
  for matrix, mode in zip(matrices, modes, strict=True):
    tensor = mode_dot(tensor, matrix.T if transpose else matrix, mode)
  return tensor


def khatri_rao(matrices: Sequence[jax.Array]) -> jax.Array:
  """Column-wise Kronecker product: (I_0, R), ..., (I_k, R) -> (prod I, R).

  The first matrix's row index varies slowest, matching `unfold`.
  """
  rank = matrices[0].shape[1]
  out = matrices[0]
  for matrix in matrices[1:]:
    if matrix.shape[1] != rank:
      raise ValueError(
          f"khatri_rao: all matrices need {rank} columns, got {matrix.shape}")
    out = jnp.reshape(out[:, None, :] * matrix[None, :, :], (-1, rank))
  return out


def kronecker(matrices: Sequence[jax.Array]) -> jax.Array:
  """Kronecker product of matrices, the first one's indices varying slowest."""
  out = matrices[0]
  for matrix in matrices[1:]:
    out = jnp.kron(out, matrix)
  return out


_HALF = (jnp.bfloat16, jnp.float16)


def in_float32(decompose: Callable) -> Callable:
  """`decompose(tensor, ...)` run on a bfloat16 or float16 tensor in
  float32 (XLA has no SVD, QR or eigh kernels in them), its arrays returned
  in the tensor's dtype; any other dtype passes through untouched."""

  @functools.wraps(decompose)
  def wrapper(tensor, *args, **kwargs):
    dtype = jnp.result_type(tensor)
    if dtype not in _HALF:
      return decompose(tensor, *args, **kwargs)
    found = decompose(jnp.asarray(tensor, jnp.float32), *args, **kwargs)
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(
        a.dtype, jnp.floating) else a, found)

  return wrapper
