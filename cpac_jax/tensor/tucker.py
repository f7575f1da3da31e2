"""Tucker tensors: reconstruction, HOSVD / HOOI decomposition, gradients.

A Tucker tensor is a core tensor multiplied along each mode by a factor
matrix, X = core x_0 U_0 x_1 U_1 ... (`base.multi_mode_dot`). A partial
Tucker tensor factorizes only some `modes`; the others keep their size in
the core.
"""

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from cpac_jax.tensor import base
from cpac_jax.tensor.rank import RankSpec, tucker_rank

__all__ = [
    "TuckerTensor",
    "hooi",
    "hosvd",
    "tucker",
    "tucker_grads",
    "tucker_to_tensor",
]


class TuckerTensor(NamedTuple):
  """A Tucker tensor: a `core` and a factor matrix (I_n, R_n) per mode.

  With a partial decomposition, `factors[i]` belongs to `modes[i]` of the
  call that made it; pass the same `modes` to `tucker_to_tensor`.
  """

  core: jax.Array
  factors: Sequence[jax.Array]


def tucker_to_tensor(tucker_tensor: TuckerTensor,
                     modes: Sequence[int] | None = None) -> jax.Array:
  """The full tensor a (partial) Tucker tensor holds."""
  core, factors = tucker_tensor
  return base.multi_mode_dot(core, factors, modes)


def _check(tensor: jax.Array, rank, modes, caller: str):
  modes = tuple(range(tensor.ndim)) if modes is None else tuple(modes)
  if len(set(modes)) != len(modes) or not all(
      isinstance(m, int) and 0 <= m < tensor.ndim for m in modes):
    raise ValueError(
        f"{caller}: modes must be distinct axes of a {tensor.ndim}-way "
        f"tensor, got {modes}")
  return tucker_rank(tensor.shape, rank, modes, layer=caller), modes


def _leading_vectors(matrix: jax.Array, k: int) -> jax.Array:
  """k orthonormal columns, the leading left singular vectors first; where
  the matrix has fewer than k columns (a mode rank above the product of the
  others), completed by an orthonormal basis of the rest of the space."""
  u, _, _ = jnp.linalg.svd(matrix, full_matrices=matrix.shape[1] < k)
  return u[:, :k]


@base.in_float32
def hosvd(tensor: jax.Array, rank: RankSpec,
          modes: Sequence[int] | None = None) -> TuckerTensor:
  """Truncated higher-order SVD: U_n = leading left singular vectors of the
  mode-n unfolding; core = tensor projected onto them. Exact at full rank."""
  ranks, modes = _check(tensor, rank, modes, "hosvd")
  factors = [_leading_vectors(base.unfold(tensor, m), r)
             for r, m in zip(ranks, modes)]
  core = base.multi_mode_dot(tensor, factors, modes, transpose=True)
  return TuckerTensor(core, factors)


@base.in_float32
def hooi(tensor: jax.Array, rank: RankSpec,
         modes: Sequence[int] | None = None, *, n_iter_max: int = 100,
         tol: float = 1e-8) -> TuckerTensor:
  """Higher-order orthogonal iteration, started from `hosvd`.

  Each sweep re-fits U_n to the tensor projected on all other factors. The
  factors stay orthonormal, so the fit is ||core|| / ||tensor|| and the loop
  stops when it improves by less than `tol`, or after `n_iter_max` sweeps.
  """
  ranks, modes = _check(tensor, rank, modes, "hooi")
  factors = list(hosvd(tensor, ranks, modes).factors)
  norm = jnp.linalg.norm(tensor)
  safe_norm = jnp.where(norm > 0, norm, 1)

  def sweep(state):
    iteration, factors, _, fit = state
    factors = list(factors)
    for i, (r, m) in enumerate(zip(ranks, modes)):
      others = [f for j, f in enumerate(factors) if j != i]
      other_modes = [n for j, n in enumerate(modes) if j != i]
      projected = base.multi_mode_dot(tensor, others, other_modes,
                                      transpose=True)
      factors[i] = _leading_vectors(base.unfold(projected, m), r)
    core = base.multi_mode_dot(tensor, factors, modes, transpose=True)
    return iteration + 1, factors, fit, jnp.linalg.norm(core) / safe_norm

  def not_done(state):
    iteration, _, previous_fit, fit = state
    return (iteration < n_iter_max) & ~(jnp.abs(fit - previous_fit) < tol)

  start = jnp.asarray(-1.0, tensor.dtype)
  state = (0, factors, start, jnp.asarray(0.0, tensor.dtype))
  _, factors, _, _ = jax.lax.while_loop(not_done, sweep, state)
  core = base.multi_mode_dot(tensor, factors, modes, transpose=True)
  return TuckerTensor(core, factors)


@base.in_float32
def tucker(tensor: jax.Array, rank: RankSpec,
           modes: Sequence[int] | None = None, *, method: str = "hooi",
           n_iter_max: int = 100, tol: float = 1e-8) -> TuckerTensor:
  """Tucker decomposition of `tensor` over `modes` (all by default).

  Args:
    tensor: any order >= 1.
    rank: a rank spec (`cpac_jax.tensor.rank`): an int for every mode, one
      int per mode, each in 1..I_n, a float fraction or 'same'.
    modes: the modes to factorize; the others stay whole in the core.
    method: "hooi" (default) or "hosvd".
    n_iter_max, tol: HOOI's sweep cap and fit tolerance.
  """
  if method == "hosvd":
    return hosvd(tensor, rank, modes)
  if method == "hooi":
    return hooi(tensor, rank, modes, n_iter_max=n_iter_max, tol=tol)
  raise ValueError(f"tucker: method must be 'hooi' or 'hosvd', got {method!r}")


def tucker_grads(core: jax.Array, factors: Sequence[jax.Array],
                 tensor_grad: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
  """The TTL paper's backward pass, in closed form (all modes factorized).

  For X = core x_0 U_0 ... x_{M-1} U_{M-1} and dL/dX = `tensor_grad`:
  dL/dU_n = unfold(dL/dX, n) @ kron(U_m, m != n) @ unfold(core, n).T and
  dL/dcore = dL/dX x_0 U_0^T ... x_{M-1} U_{M-1}^T. The Kronecker product is
  formed as written, as a reference; training uses autodiff.

  Returns:
    (core gradient, one gradient per factor).
  """
  factor_grads = [
      base.unfold(tensor_grad, n)
      @ base.kronecker([f for m, f in enumerate(factors) if m != n])
      @ base.unfold(core, n).T
      for n in range(len(factors))
  ]
  core_grad = base.multi_mode_dot(tensor_grad, factors, transpose=True)
  return core_grad, factor_grads
