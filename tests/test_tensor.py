"""cpac_jax.tensor: unfold/fold, CP and Tucker against references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cpac_jax import tensor


@pytest.fixture
def tensorly():
  """TensorLy as the oracle; a test that takes it skips alone without it."""
  pytest.importorskip("tensorly.decomposition")
  import tensorly

  return tensorly


def random_factors(shape, rank, seed=0):
  keys = jax.random.split(jax.random.key(seed), len(shape))
  return [jax.random.normal(k, (s, rank)) for k, s in zip(keys, shape)]


def relative_error(x, y):
  return float(jnp.linalg.norm(x - y) / jnp.linalg.norm(x))


@pytest.mark.parametrize("shape", [(3, 4), (3, 4, 5), (2, 3, 4, 5)])
def test_fold_inverts_unfold_and_matches_tensorly(shape, tensorly):
  x = jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape)
  for mode in range(len(shape)):
    matrix = tensor.unfold(x, mode)
    np.testing.assert_array_equal(matrix, tensorly.unfold(np.asarray(x), mode))
    np.testing.assert_array_equal(tensor.fold(matrix, mode, shape), x)


def test_mode_dot_matches_tensorly(tensorly):
  x = jax.random.normal(jax.random.key(0), (3, 4, 5))
  m = jax.random.normal(jax.random.key(1), (6, 4))
  np.testing.assert_allclose(
      tensor.mode_dot(x, m, 1),
      tensorly.tenalg.mode_dot(np.asarray(x), np.asarray(m), 1), rtol=1e-5)


def test_mode_dot_rejects_mismatched_matrix():
  with pytest.raises(ValueError, match=r"expected \(J, 4\)"):
    tensor.mode_dot(jnp.ones((3, 4, 5)), jnp.ones((6, 3)), 1)


@pytest.mark.parametrize("shape,rank", [((5, 6, 7), 3), ((3, 3, 8, 6), 4)])
def test_cp_to_tensor_matches_tensorly(shape, rank, tensorly):
  factors = random_factors(shape, rank)
  weights = jnp.arange(1.0, rank + 1)
  expected = tensorly.cp_to_tensor(
      (np.asarray(weights), [np.asarray(f) for f in factors]))
  np.testing.assert_allclose(
      tensor.cp_to_tensor(tensor.CPTensor(weights, factors)), expected,
      rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(5, 6, 7), (3, 3, 8, 6)])
def test_mttkrp_matches_unfolding_times_khatri_rao(shape):
  x = jax.random.normal(jax.random.key(0), shape)
  factors = random_factors(shape, 4, seed=1)
  for mode in range(len(shape)):
    others = [f for m, f in enumerate(factors) if m != mode]
    np.testing.assert_allclose(
        tensor.mttkrp(x, factors, mode),
        tensor.unfold(x, mode) @ tensor.khatri_rao(others), rtol=1e-4,
        atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("shape,rank,init", [
    ((6, 7, 8), 3, "svd"), ((6, 7, 8), 3, "random"),
    ((3, 3, 6, 8), 4, "svd"), ((3, 3, 6, 8), 5, "random")])
def test_cp_als_recovers_exact_rank(shape, rank, init):
  x = tensor.cp_to_tensor(random_factors(shape, rank, seed=2))
  cp = tensor.cp_als(x, rank, n_iter_max=1000, tol=1e-10, init=init)
  assert relative_error(x, tensor.cp_to_tensor(cp)) < 1e-4
  norms = [jnp.linalg.norm(f, axis=0) for f in cp.factors]
  np.testing.assert_allclose(jnp.stack(norms), 1.0, rtol=1e-5)
  assert bool(jnp.all(cp.weights[:-1] >= cp.weights[1:]))


@pytest.mark.slow
@pytest.mark.parametrize("shape,rank", [((8, 9, 10), 3), ((3, 3, 16, 16), 6)])
def test_cp_als_no_worse_than_tensorly_at_low_rank(shape, rank, tensorly):
  x = jax.random.normal(jax.random.key(3), shape)
  ours = relative_error(x, tensor.cp_to_tensor(
      tensor.cp_als(x, rank, n_iter_max=200, tol=1e-9)))
  weights, factors = tensorly.decomposition.parafac(
      np.asarray(x, np.float64), rank, n_iter_max=200, tol=1e-9, init="svd")
  theirs = relative_error(x, tensorly.cp_to_tensor((weights, factors)))
  assert ours <= theirs + 1e-3


@pytest.mark.slow
def test_cp_als_reports_decreasing_errors():
  x = jax.random.normal(jax.random.key(4), (6, 7, 8))
  _, errors = tensor.cp_als(x, 4, n_iter_max=30, tol=0.0, return_errors=True)
  assert errors.shape == (30,)
  assert bool(jnp.all(errors[1:] <= errors[:-1] + 1e-5))


@pytest.mark.slow
def test_cp_als_large_kernel_stays_within_a_few_kernels_of_memory():
  # Peers' parafac builds Khatri-Rao products of (kernel size / mode) x R:
  # here 21x the kernel. Ours must stay within a few kernels of scratch.
  kernel = jax.ShapeDtypeStruct((512, 512, 3, 3), jnp.float32)
  compiled = jax.jit(lambda w: tensor.cp_als(w, 64, n_iter_max=10)).lower(
      kernel).compile()
  analysis = compiled.memory_analysis()
  if analysis is None:
    pytest.skip("this backend reports no memory analysis")
  kernel_bytes = 512 * 512 * 9 * 4
  assert analysis.temp_size_in_bytes < 6 * kernel_bytes


@pytest.mark.parametrize("args", [dict(rank=0), dict(rank=2.5),
                                  dict(rank=True), dict(rank=2, init="pca")])
def test_cp_als_rejects_bad_arguments(args):
  with pytest.raises(ValueError, match="cp_als"):
    tensor.cp_als(jnp.ones((3, 4, 5)), **args)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["hooi", "hosvd"])
@pytest.mark.parametrize("shape,rank", [((6, 7, 8), (2, 3, 4)),
                                        ((3, 3, 8, 6), (3, 3, 4, 2))])
def test_tucker_recovers_exact_rank(method, shape, rank):
  keys = jax.random.split(jax.random.key(5), len(shape) + 1)
  core = jax.random.normal(keys[0], rank)
  factors = [jax.random.normal(k, (s, r))
             for k, s, r in zip(keys[1:], shape, rank)]
  x = tensor.tucker_to_tensor((core, factors))
  tk = tensor.tucker(x, rank, method=method)
  assert relative_error(x, tensor.tucker_to_tensor(tk)) < 1e-5
  for f in tk.factors:  # orthonormal columns
    np.testing.assert_allclose(f.T @ f, jnp.eye(f.shape[1]), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("shape,rank", [((8, 9, 10), (3, 3, 3)),
                                        ((28, 28, 30), (5, 5, 10))])
def test_tucker_no_worse_than_tensorly_at_low_rank(shape, rank, tensorly):
  x = jax.random.normal(jax.random.key(6), shape)
  ours = relative_error(x, tensor.tucker_to_tensor(tensor.tucker(x, rank)))
  core, factors = tensorly.decomposition.tucker(np.asarray(x, np.float64), rank,
                                          n_iter_max=100, tol=1e-8)
  theirs = relative_error(x, tensorly.tucker_to_tensor((core, factors)))
  assert ours <= theirs + 1e-4


@pytest.mark.slow
def test_partial_tucker_keeps_other_modes_whole():
  x = jax.random.normal(jax.random.key(7), (3, 3, 8, 6))
  tk = tensor.tucker(x, (4, 2), modes=(2, 3))
  assert tk.core.shape == (3, 3, 4, 2)
  assert [f.shape for f in tk.factors] == [(8, 4), (6, 2)]
  full = tensor.tucker(x, (8, 6), modes=(2, 3))
  assert relative_error(x, tensor.tucker_to_tensor(full, (2, 3))) < 1e-5


@pytest.mark.slow
def test_tucker_works_under_jit():
  x = jax.random.normal(jax.random.key(8), (6, 7, 8))
  eager = tensor.tucker(x, (2, 3, 4))
  jitted = jax.jit(lambda x: tensor.tucker(x, (2, 3, 4)))(x)
  np.testing.assert_allclose(tensor.tucker_to_tensor(eager),
                             tensor.tucker_to_tensor(jitted), atol=1e-5)


@pytest.mark.parametrize("rank,match", [
    (9, r"1\.\.7"), ((2, 3), "3 modes"), (0, "out of range"),
    ("full", "'same'"), (2.0, r"\(0, 1\]")])
def test_tucker_rejects_bad_rank(rank, match):
  with pytest.raises(ValueError, match=match):
    tensor.tucker(jnp.ones((6, 7, 8)), rank)


def test_tucker_rejects_bad_method():
  with pytest.raises(ValueError, match="'hooi' or 'hosvd'"):
    tensor.tucker(jnp.ones((6, 7, 8)), 2, method="parafac")


@pytest.mark.slow
@pytest.mark.parametrize("shape,rank", [((4, 5, 6, 3), 2),
                                        ((4, 5, 6, 3), (1, 3, 4, 2, 1)),
                                        ((3, 3, 8, 6), 100)])
def test_tt_svd_matches_tensorly_tensor_train(shape, rank, tensorly):
  from tensorly.decomposition import tensor_train

  x = jax.random.normal(jax.random.key(0), shape)
  cores = tensor.tt_svd(x, rank)
  ranks = tensor.tt_rank(shape, rank)
  assert [c.shape for c in cores] == [
      (ranks[k], s, ranks[k + 1]) for k, s in enumerate(shape)]
  theirs = tensor_train(np.asarray(x), list(ranks))
  # The cores differ by a gauge; the tensors they hold agree.
  np.testing.assert_allclose(tensor.tt_to_tensor(cores),
                             tensorly.tt_to_tensor(theirs), atol=1e-4)
  np.testing.assert_allclose(
      tensor.tt_to_tensor([jnp.asarray(c) for c in theirs]),
      tensorly.tt_to_tensor(theirs), atol=1e-5)
  if ranks == tensor.tt_max_ranks(shape):
    assert relative_error(x, tensor.tt_to_tensor(cores)) < 1e-5


@pytest.mark.slow
def test_tt_matrix_svd_matches_tensorly_tensor_train_matrix(tensorly):
  from tensorly.decomposition import tensor_train_matrix

  weight = jax.random.normal(jax.random.key(1), (4 * 7 * 2, 3 * 5 * 2))
  cores = tensor.tt_matrix_svd(weight, (4, 7, 2), (3, 5, 2), (1, 5, 3, 1))
  assert [c.shape for c in cores] == [(1, 4, 3, 5), (5, 7, 5, 3),
                                      (3, 2, 2, 1)]
  theirs = tensor_train_matrix(
      tensorly.tensor(np.asarray(weight).reshape(4, 7, 2, 3, 5, 2)),
      [1, 5, 3, 1])
  np.testing.assert_allclose(tensor.tt_matrix_to_tensor(cores),
                             tensorly.tt_matrix_to_tensor(theirs), atol=1e-4)
  np.testing.assert_allclose(
      tensor.tt_matrix_to_tensor([jnp.asarray(c) for c in theirs.factors]),
      tensorly.tt_matrix_to_tensor(theirs), atol=1e-5)


@pytest.mark.slow
def test_tt_svd_gives_zero_slices_to_ranks_a_bond_cannot_hold():
  x = jax.random.normal(jax.random.key(2), (2, 2, 8, 8))
  cores = tensor.tt_svd(x, (1, 1, 4, 8, 1))  # r_2 = 4 > r_1 * I_1 = 2
  assert [c.shape for c in cores] == [(1, 2, 1), (1, 2, 4), (4, 8, 8),
                                      (8, 8, 1)]
  np.testing.assert_array_equal(cores[1][..., 2:], 0)
  exact = tensor.tt_svd(x, (1, 1, 2, 8, 1))
  np.testing.assert_allclose(tensor.tt_to_tensor(cores),
                             tensor.tt_to_tensor(exact), atol=1e-5)


def test_tt_matrix_svd_rejects_shapes_that_dont_match():
  with pytest.raises(ValueError, match="as many modes"):
    tensor.tt_matrix_svd(jnp.ones((12, 6)), (3, 4), (6,), 2)
  with pytest.raises(ValueError, match="12 x 5"):
    tensor.tt_matrix_svd(jnp.ones((12, 6)), (3, 4), (5, 1), 2)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("decompose,rebuild", [
    (lambda x: tensor.cp_als(x, 3, n_iter_max=20), tensor.cp_to_tensor),
    (lambda x: tensor.tucker(x, (2, 3, 3)), tensor.tucker_to_tensor),
    (lambda x: tensor.hosvd(x, (2, 3, 3)), tensor.tucker_to_tensor),
    (lambda x: tensor.tt_svd(x, 2), tensor.tt_to_tensor),
], ids=["cp_als", "tucker", "hosvd", "tt_svd"])
def test_half_precision_tensors_decompose_in_float32(dtype, decompose,
                                                     rebuild):
  """A bfloat16 or float16 tensor is decomposed in float32 and its factors
  come back in its dtype, as good as the float32 tensor's to the
  precision of that dtype."""
  x = jax.random.normal(jax.random.key(3), (4, 5, 6))
  half = decompose(x.astype(dtype))
  assert {a.dtype for a in jax.tree.leaves(half)} == {jnp.dtype(dtype)}
  error = relative_error(x, rebuild(jax.tree.map(
      lambda a: a.astype(jnp.float32), half)))
  assert error == pytest.approx(relative_error(x, rebuild(decompose(x))),
                                abs=0.02)
