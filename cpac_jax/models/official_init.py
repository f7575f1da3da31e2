"""The CPAC-Conv official code's initialisation, for `CPACNet(init="official")`.

What the official code (wyn430/CPAC-CNN, `CPAC-CNN-GPU/conv_decomp_torch.py`,
`cnn_torch.py`; see experiments/cpac_mnist/official_code.md) does:

- Each CP conv draws a random kernel `np.random.randn(F, kh, kw, Cin) /
  (kh * kw)` from numpy's global generator, seeded to 48, conv1 first, then
  conv2; decomposes it with TensorLy 0.4's `parafac(kernel, rank)` (SVD
  start, at most 100 ALS sweeps, tol 1e-7 on the change of the relative
  error, no normalisation, no weights); and trains the four factors as they
  come: (F, R), (kh, R), (kw, R), (Cin, R).
- Dense convs, and every FC layer with its bias, take PyTorch's defaults:
  uniform in +-1/sqrt(fan_in).

Where we differ, and why (the differences found so far, in the
initialisation and in the training around it; not a proof that there are
no others):

- Run `seed` draws the kernels from `RandomState(48 + seed)`: seed 0 draws
  exactly the official kernels, other seeds other kernels.
- TensorLy 0.4 fills the columns of a mode's start beyond its size (rank >
  mode size: every column but the first of the 1-channel mode of conv1) with
  uniform [0, 1) numbers from a generator it seeds from OS entropy, which no
  run can reproduce; we draw them from `RandomState(48 + seed)` too, after
  the kernels.
- Its SVD start for rank < min(mode size, rest) comes from ARPACK's `eigsh`;
  ours from numpy's SVD: the same singular vectors, up to sign, which ALS
  carries through to the same tensor.
- Its ALS solves each sweep's normal equations with `np.linalg.solve`, as
  ours does. Where they are exactly singular (conv1, 8 x 3 x 3 x 1, at rank
  >= 10 has at most 9 columns of data: its Gram matrices have rank <= 9),
  `solve` raises in numpy; we then take the minimum-norm least-squares
  solution (`np.linalg.lstsq`). Where they are merely ill-conditioned,
  `solve` returns large, degenerate factors, as the official init did.
  At ranks 1-9 our factors are TensorLy 0.4.0's for the same kernels and
  fill draws; at ranks 10-12 conv1's are not, though both rebuild the same
  kernel (experiments/cpac_mnist/official_parafac.json, written by
  scripts/check_official_parafac.py; why they part is not known).
- Factors and their optimizer state are float32 here by default, float64
  there; `CPACNet(factor_dtype="float64")` (under JAX_ENABLE_X64=1) holds
  them as the official code does, the convs computing in float32 as its
  forward does.
- The FC and dense-conv draws come from the run's JAX key, not torch's
  generator (the same distribution).
- The flatten before the first FC layer: the official nets flatten each
  image's (C, H, W) activations (`x.view(-1, flatten_shape)` on torch's
  channels-first tensors), ours (H, W, C) (`CPACNet.__call__` reshapes
  NHWC). The two differ by a fixed permutation of FC1's inputs. Its
  weights are drawn i.i.d., so the permuted draw has the same
  distribution, and Adam works elementwise, so training carries the
  permutation along: in distribution the same run. It matters only to
  load the official saved weights, whose FC1 columns would need permuting.
- The data order: the official train loader (`DataLoader(shuffle=True)`)
  draws each epoch's order from torch's global generator (seeded to 48);
  ours is `jax.random.permutation` of the run's data key folded with the
  epoch (`cpac_jax.train.epoch_order`). Same kind of order, other draws.
- The Magnetic-Tile split: the official code's `random_split` (torch's
  `randperm` under seed 48, 563/100), one split; ours the same sizes from a
  `numpy.random.RandomState(seed)` permutation (`cpac_jax.data`), a split
  per seed.
- The number of epochs: the official repository does not record it (a
  command-line argument of the train scripts; its README's example runs 10);
  ours is the config's `num_epochs` (10 on MNIST, 30 on Magnetic-Tile).
"""

import string
from collections.abc import Sequence

import jax
import numpy as np

__all__ = ["OFFICIAL_SEED", "kernels", "parafac", "torch_uniform"]

OFFICIAL_SEED = 48


def _cp_tensor(factors: Sequence[np.ndarray]) -> np.ndarray:
  letters = string.ascii_lowercase[:len(factors)]
  return np.einsum(",".join(f"{x}z" for x in letters) + "->" + letters,
                   *factors)


def _mttkrp(tensor: np.ndarray, factors: Sequence[np.ndarray],
            mode: int) -> np.ndarray:
  """unfold(tensor, mode) @ khatri_rao(the other factors), by einsum."""
  letters = string.ascii_lowercase[:tensor.ndim]
  others = [f"{x}z" for m, x in enumerate(letters) if m != mode]
  return np.einsum(f"{letters}," + ",".join(others) + f"->{letters[mode]}z",
                   tensor, *(f for m, f in enumerate(factors) if m != mode))


def _svd_start(tensor: np.ndarray, rank: int, rng: np.random.RandomState
               ) -> list[np.ndarray]:
  """TensorLy 0.4's init='svd': each mode's leading left singular vectors,
  columns past the mode's size uniform in [0, 1)."""
  factors = []
  for mode, size in enumerate(tensor.shape):
    unfolded = np.reshape(np.moveaxis(tensor, mode, 0), (size, -1))
    u = np.linalg.svd(unfolded, full_matrices=True)[0][:, :rank]
    if size < rank:
      u = np.concatenate([u, rng.random_sample((size, rank - size))], axis=1)
    factors.append(u)
  return factors


def parafac(tensor: np.ndarray, rank: int, rng: np.random.RandomState, *,
            n_iter_max: int = 100, tol: float = 1e-7) -> list[np.ndarray]:
  """CP-ALS of `tensor` as TensorLy 0.4.0's `parafac(tensor, rank)` computes
  it: SVD start (`_svd_start`), then sweeps over the modes solving each
  factor's normal equations, stopping after `n_iter_max` sweeps or once the
  relative reconstruction error changes by less than `tol` (checked from the
  third sweep on). The factors come back unnormalised, float64.

  Example:
    >>> rng = np.random.RandomState(0)
    >>> x = _cp_tensor([rng.randn(4, 2), rng.randn(3, 2), rng.randn(5, 2)])
    >>> factors = parafac(x, 2, np.random.RandomState(1))
    >>> bool(np.allclose(_cp_tensor(factors), x, atol=1e-4))
    True
  """
  tensor = np.asarray(tensor, np.float64)
  factors = _svd_start(tensor, rank, rng)
  norm = np.linalg.norm(tensor)
  errors = []
  for iteration in range(n_iter_max):
    for mode in range(tensor.ndim):
      gram = np.ones((rank, rank))
      for other, factor in enumerate(factors):
        if other != mode:
          gram = gram * (factor.T @ factor)
      rhs = _mttkrp(tensor, factors, mode)
      try:
        factors[mode] = np.linalg.solve(gram.T, rhs.T).T
      except np.linalg.LinAlgError:  # exactly singular: see the module doc
        factors[mode] = np.linalg.lstsq(gram.T, rhs.T, rcond=None)[0].T
    errors.append(np.linalg.norm(tensor - _cp_tensor(factors)) / norm)
    if iteration > 1 and abs(errors[-2] - errors[-1]) < tol:
      break
  return factors


def kernels(shapes: Sequence[tuple[int, int, int, int]], ranks: Sequence[int],
            seed: int) -> list[list[np.ndarray]]:
  """The official CP factors of each conv, in `CPConv`'s mode order
  [(kh, R), (kw, R), (Cin, R), (Cout, R)]: kernels (F, kh, kw, Cin) drawn in
  order from `RandomState(48 + seed)`, divided by kh * kw, then each
  decomposed by `parafac`, its fill columns drawn from the same generator
  after all kernels."""
  rng = np.random.RandomState(OFFICIAL_SEED + seed)
  drawn = [rng.randn(*shape) / (shape[1] * shape[2]) for shape in shapes]
  result = []
  for kernel, rank in zip(drawn, ranks, strict=True):
    out, height, width, channels = parafac(kernel, rank, rng)
    result.append([height, width, channels, out])
  return result


def torch_uniform(key: jax.Array, shape: Sequence[int], fan_in: int,
                  dtype=np.float32) -> jax.Array:
  """PyTorch's default draw for Linear and Conv weights and biases:
  uniform in +-1/sqrt(fan_in)."""
  bound = 1 / np.sqrt(fan_in)
  return jax.random.uniform(key, tuple(shape), dtype, -bound, bound)
