"""CP (CANDECOMP/PARAFAC) tensors: reconstruction, ALS decomposition, gradients.

A rank-R CP tensor is a sum of R outer products,
X = sum_r weights[r] * a_0[:, r] o a_1[:, r] o ... o a_{M-1}[:, r].
"""

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from cpac_jax.tensor import base
from cpac_jax.tensor.rank import RankSpec, cp_rank

__all__ = [
    "CPTensor",
    "cp_als",
    "cp_factor_grads",
    "cp_to_tensor",
    "mttkrp",
]


class CPTensor(NamedTuple):
  """A CP tensor: `weights` (R,) and one factor matrix (I_n, R) per mode."""

  weights: jax.Array
  factors: Sequence[jax.Array]

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(f.shape[0] for f in self.factors)

  @property
  def rank(self) -> int:
    return self.factors[0].shape[1]


def cp_to_tensor(cp: CPTensor | Sequence[jax.Array]) -> jax.Array:
  """The full tensor (I_0, ..., I_{M-1}) a CP tensor (or bare factors) holds."""
  if isinstance(cp, CPTensor):
    weights, factors = cp
  else:
    weights, factors = None, cp
  factors = list(factors)
  if weights is not None:
    factors[0] = factors[0] * weights
  if len(factors) == 1:
    return jnp.sum(factors[0], axis=1)
  # The largest mode becomes one side of a matmul and the Khatri-Rao product
  # of the others the other: a (size / largest, R) intermediate, where
  # putting the largest mode inside it (a conv kernel's Cout, say) would
  # make it R times the size of the tensor.
  mode = max(range(len(factors)), key=lambda m: factors[m].shape[0])
  others = factors[:mode] + factors[mode + 1:]
  matrix = factors[mode] @ base.khatri_rao(others).T
  shape = [f.shape[0] for f in others]
  return jnp.moveaxis(jnp.reshape(matrix, [factors[mode].shape[0]] + shape),
                      0, mode)


def mttkrp(tensor: jax.Array, factors: Sequence[jax.Array],
           mode: int) -> jax.Array:
  """unfold(tensor, mode) @ khatri_rao(factors except `mode`), without the KR.

  Contracts the other modes one at a time, largest first, so the biggest
  intermediate is (tensor.size / largest mode) * R: for R below the largest
  dimension, smaller than the tensor itself. Returns (I_mode, R).
  """
  ndim = tensor.ndim
  others = sorted((m for m in range(ndim) if m != mode),
                  key=lambda m: -tensor.shape[m])
  first = others[0]
  out = jnp.tensordot(tensor, factors[first], axes=((first,), (0,)))
  axes = [m for m in range(ndim) if m != first]  # axes of `out`, then rank
  letters = "abcdefghijklmnopqrstuvwxy"
  for m in others[1:]:
    sub = letters[:len(axes)]
    pos = axes.index(m)
    kept = sub[:pos] + sub[pos + 1:]
    out = jnp.einsum(f"{sub}z,{sub[pos]}z->{kept}z", out, factors[m])
    axes.pop(pos)
  return out


def _init_factors(tensor: jax.Array, rank: int, init: str,
                  key: jax.Array) -> list[jax.Array]:
  keys = jax.random.split(key, tensor.ndim)
  factors = []
  for mode, size in enumerate(tensor.shape):
    random = jax.random.normal(keys[mode], (size, rank), tensor.dtype)
    if init == "svd":
      # Left singular vectors of the unfolding, as eigenvectors of its
      # (I_n, I_n) Gram matrix: an SVD would add a (rest, I_n) factor.
      matrix = base.unfold(tensor, mode)
      gram = matrix @ matrix.T
      _, vectors = jnp.linalg.eigh(gram)
      k = min(rank, size)
      # Modes smaller than the rank keep random columns past the SVD's.
      random = random.at[:, :k].set(vectors[:, ::-1][:, :k] * jnp.sqrt(size))
    factors.append(random)
  return factors


def _normalize(factor: jax.Array) -> tuple[jax.Array, jax.Array]:
  norms = jnp.linalg.norm(factor, axis=0)
  safe = jnp.where(norms > 0, norms, 1)
  return factor / safe, norms


@base.in_float32
def cp_als(tensor: jax.Array, rank: RankSpec, *, n_iter_max: int = 100,
           tol: float = 1e-7, init: str = "svd", key: jax.Array | None = None,
           return_errors: bool = False):
  """CP decomposition by alternating least squares.

  Each sweep solves for one factor at a time with the others fixed,
  A_n = mttkrp(X, A, n) @ pinv(hadamard of A_m^T A_m, m != n), then moves the
  column norms into `weights`. Memory stays within a few copies of the tensor:
  the Khatri-Rao products are never formed (see `mttkrp`). Stops when the
  relative reconstruction error changes by less than `tol` between sweeps, or
  after `n_iter_max` sweeps. jit-able with `rank`, `n_iter_max`, `init` static.

  Args:
    tensor: the tensor to decompose, any order >= 2.
    rank: CP rank R >= 1, or a fraction / 'same' (`cpac_jax.tensor.rank`).
    n_iter_max: cap on ALS sweeps.
    tol: stop when the relative error improves by less than this.
    init: "svd" (leading left singular vectors of each unfolding, random
      columns beyond a mode's size) or "random" (normal entries).
    key: PRNG key for the random columns; defaults to key 0.
    return_errors: also return the relative error after each sweep, shape
      (n_iter_max,), NaN past the last sweep run.

  Returns:
    A `CPTensor` with unit-norm factor columns, sorted by descending weight;
    with `return_errors`, a (CPTensor, errors) pair.
  """
  if init not in ("svd", "random"):
    raise ValueError(f"cp_als: init must be 'svd' or 'random', got {init!r}")
  if tensor.ndim < 2:
    raise ValueError(
        f"cp_als: need a tensor of order >= 2, got shape {tensor.shape}")
  if n_iter_max < 1:
    raise ValueError(f"cp_als: n_iter_max must be >= 1, got {n_iter_max!r}")
  tensor = jnp.asarray(tensor)
  rank = cp_rank(tensor.shape, rank, layer="cp_als")
  if not jnp.issubdtype(tensor.dtype, jnp.floating):
    tensor = tensor.astype(jnp.float32)
  key = jax.random.key(0) if key is None else key
  factors = [_normalize(f)[0] for f in _init_factors(tensor, rank, init, key)]
  weights = jnp.ones((rank,), tensor.dtype)
  norm = jnp.linalg.norm(tensor)
  safe_norm = jnp.where(norm > 0, norm, 1)
  errors = jnp.full((n_iter_max,), jnp.nan, tensor.dtype)

  def sweep(state):
    iteration, factors, weights, _, errors = state
    factors = list(factors)
    grams = [f.T @ f for f in factors]
    for mode in range(tensor.ndim):
      gram = jnp.ones((rank, rank), tensor.dtype)
      for m in range(tensor.ndim):
        if m != mode:
          gram = gram * grams[m]
      factor = mttkrp(tensor, factors, mode) @ jnp.linalg.pinv(gram)
      factors[mode], weights = _normalize(factor)
      grams[mode] = factors[mode].T @ factors[mode]
    error = jnp.linalg.norm(
        tensor - cp_to_tensor(CPTensor(weights, factors))) / safe_norm
    errors = errors.at[iteration].set(error)
    return iteration + 1, factors, weights, error, errors

  def not_done(state):
    iteration, _, _, error, errors = state
    previous = jnp.where(iteration > 1, errors[iteration - 2], jnp.inf)
    return (iteration < n_iter_max) & ~(jnp.abs(previous - error) < tol)

  state = (0, factors, weights, jnp.asarray(jnp.inf, tensor.dtype), errors)
  state = sweep(state)
  _, factors, weights, _, errors = jax.lax.while_loop(not_done, sweep, state)
  order = jnp.argsort(-weights)
  cp = CPTensor(weights[order], [f[:, order] for f in factors])
  return (cp, errors) if return_errors else cp


def cp_factor_grads(factors: Sequence[jax.Array],
                    tensor_grad: jax.Array) -> list[jax.Array]:
  """The CPAC-Conv paper's backward pass, in closed form.

  For X = cp_to_tensor(factors) (weights folded into the factors) and a loss
  L with dL/dX = `tensor_grad`, the gradient with respect to factor n is the
  mode-n unfolding of dL/dX times the Khatri-Rao product of the other factors:
  dL/dA_n = unfold(dL/dX, n) @ khatri_rao(A_m, m != n). This forms the
  Khatri-Rao product as written, as a reference; training uses autodiff.

  Returns:
    One gradient per factor, each shaped like it.
  """
  return [
      base.unfold(tensor_grad, n)
      @ base.khatri_rao([f for m, f in enumerate(factors) if m != n])
      for n in range(len(factors))
  ]
