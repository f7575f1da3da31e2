"""model.init="official": the CPAC-Conv official code's initialisation."""

import numpy as np
import pytest
from flax import nnx

from cpac_jax import config as config_lib
from cpac_jax.models import CPACNet, official_init

# The first filter of conv1 as the official code draws it: numpy seed 48,
# randn(8, 3, 3, 1)[0, :, :, 0] / 9 (experiments/cpac_mnist/official_code.md).
OFFICIAL_FIRST_FILTER = [[-0.110, -0.118, -0.071], [0.118, -0.017, 0.122],
                         [-0.231, 0.078, 0.186]]


def official_kernels(seed=0):
  rng = np.random.RandomState(48 + seed)
  return rng.randn(8, 3, 3, 1) / 9, rng.randn(8, 3, 3, 8) / 9


@pytest.mark.slow
def test_seed_0_draws_the_official_kernels_and_full_rank_recovers_them():
  # conv1 (8 x 3 x 3 x 1) holds 9 columns of data: rank 10 fits it exactly,
  # through normal equations that are singular there.
  net = CPACNet(num_layers=2, rank=10, init="official", rngs=nnx.Rngs(0))
  kernel = np.asarray(net.convs[0].kernel_tensor())  # (kh, kw, Cin, Cout)
  np.testing.assert_allclose(kernel[:, :, 0, 0], OFFICIAL_FIRST_FILTER,
                             atol=1e-3)
  expected = np.transpose(official_kernels()[0], (1, 2, 3, 0))
  np.testing.assert_allclose(kernel, expected, atol=1e-5)
  assert all(np.isfinite(f).all() for f in net.convs[0].factors())


@pytest.mark.parametrize("which,rank", [(0, 1), (1, 1), (1, 2), (1, 3)])
def test_parafac_computes_what_tensorly_does_without_fill(which, rank):
  # Ranks no larger than any mode: the start is the SVD alone, so the ALS
  # must land where TensorLy's (init="svd", no normalisation) does.
  tensorly = pytest.importorskip("tensorly")
  from tensorly.decomposition import parafac

  kernel = official_kernels()[which]
  ours = official_init._cp_tensor(
      official_init.parafac(kernel, rank, np.random.RandomState(0)))
  weights, factors = parafac(tensorly.tensor(kernel), rank, init="svd",
                             tol=1e-7, n_iter_max=100,
                             normalize_factors=False)
  np.testing.assert_allclose(ours, tensorly.cp_to_tensor((weights, factors)),
                             atol=1e-10)


@pytest.mark.slow
def test_cp_factors_are_the_als_factors_as_they_come_and_seeds_differ():
  net = CPACNet(num_layers=2, rank=4, init="official", rngs=nnx.Rngs(0))
  expected = official_init.kernels([(8, 3, 3, 1), (8, 3, 3, 8)], [4, 4], 0)
  for conv, factors in zip(net.convs, expected, strict=True):
    for ours, theirs in zip(conv.factors(), factors, strict=True):
      np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)
  # rank 1 needs no fill: the factors are parafac's, in CPConv's mode order
  conv1 = official_init.kernels([(8, 3, 3, 1)], [1], seed=0)[0]
  out, height, width, channels = official_init.parafac(
      official_kernels()[0], 1, np.random.RandomState(0))
  for ours, theirs in zip(conv1, (height, width, channels, out), strict=True):
    np.testing.assert_array_equal(ours, theirs)
  other = official_init.kernels([(8, 3, 3, 1)], [1], seed=1)[0]
  assert not np.allclose(conv1[3], other[3])


@pytest.mark.slow
def test_dense_and_fc_layers_draw_pytorch_defaults():
  net = CPACNet(num_layers=2, factorization="dense", init="official",
                rngs=nnx.Rngs(0))
  for layer, fan_in in ((net.convs[0], 9), (net.convs[1], 72),
                        (net.fcs[0], 200), (net.fcs[1], 50)):
    bound = 1 / np.sqrt(fan_in)
    values = [np.asarray(layer.kernel[...]).ravel()]
    if layer.bias is not None:
      values.append(np.asarray(layer.bias[...]))
    for v in values:
      assert np.abs(v).max() <= bound
    weights = values[0]
    # uniform in +-bound: std bound / sqrt(3)
    assert abs(weights.std() * np.sqrt(3) / bound - 1) < 0.25


def test_init_is_checked_with_the_config():
  config = config_lib.base_config()
  config.model.rank = 5
  config_lib.override(config, "model.init", "oficial")
  with pytest.raises(ValueError, match=r"model.init in \('default', "
                                       r"'official'\), got 'oficial'"):
    config_lib.validate(config)
  config.model.name = "ttl_mlp"
  config.model.factorization = "tucker"
  config_lib.override(config, "model.rank", (5, 5, 10))
  config_lib.override(config, "model.init", "official")
  with pytest.raises(ValueError, match=r"'ttl_mlp' takes model.init in "
                                       r"\('default', 'teacher'\)"):
    config_lib.validate(config)


def test_official_init_refuses_tucker_and_tt_convs():
  for factorization in ("tucker", "tt"):
    with pytest.raises(ValueError, match=f"factorization '{factorization}' "
                       "takes init 'default'"):
      CPACNet(num_layers=2, factorization=factorization, rank=0.5,
              init="official", rngs=nnx.Rngs(0))


@pytest.mark.slow
def test_float64_factors_train_in_float64_and_compute_in_float32():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="JAX_ENABLE_X64=1"):
    CPACNet(rank=3, factor_dtype="float64", rngs=nnx.Rngs(0))
  jax.config.update("jax_enable_x64", True)
  try:
    with pytest.raises(ValueError, match="'tucker' takes 'float32'"):
      CPACNet(rank=3, factorization="tucker", factor_dtype="float64",
              rngs=nnx.Rngs(0))
    net = CPACNet(rank=3, init="official", factor_dtype="float64",
                  rngs=nnx.Rngs(0))
    params = nnx.state(net, nnx.Param)
    dtypes = {path[-2] if path[-1] in (0, 1) else path[-1]: leaf.dtype
              for path, leaf in nnx.to_flat_state(params)}
    assert dtypes["in_factor"] == dtypes["out_factor"] == jnp.float64
    assert dtypes["spatial_factors"] == jnp.float64
    assert dtypes["kernel"] == dtypes["bias"] == jnp.float32
    x = jnp.ones((2, 28, 28, 1), jnp.float32)
    assert net(x).dtype == jnp.float32
    # The same start in float32 computes the same outputs (the float64
    # factors are cast for the convs).
    narrow = CPACNet(rank=3, init="official", rngs=nnx.Rngs(0))
    np.testing.assert_allclose(net(x), narrow(x), rtol=1e-5, atol=1e-6)
  finally:
    jax.config.update("jax_enable_x64", False)
