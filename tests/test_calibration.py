"""Data-aware compression (`cj.compress(..., calibration=)`): the layers
decomposed for their outputs on the data, the budget shared by output
error, the report's output errors measured, bad calibration refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import cpac_jax as cj


class Two(nnx.Module):
  """A 3x3 conv and two dense layers, each fed its own inputs: `wide`
  inputs of every direction, `thin` inputs that nearly lie in a plane."""

  def __init__(self, rngs):
    self.conv = nnx.Conv(8, 16, (3, 3), rngs=rngs)
    self.wide = nnx.Linear(8, 12, rngs=rngs)
    self.thin = nnx.Linear(8, 12, rngs=rngs)
    self.spare = nnx.Linear(8, 12, rngs=rngs)  # never called

  def __call__(self, x):
    return (self.conv(x), self.wide(_inputs(x, "wide")),
            self.thin(_inputs(x, "thin")))


_PLANE = jnp.linalg.qr(jax.random.normal(jax.random.key(9), (8, 2)))[0]
_SCALES = jnp.logspace(0, -2, 8)
_MIX = jnp.linalg.qr(jax.random.normal(jax.random.key(7), (8, 8)))[0]


def _batches(seed, count=3):
  """Images whose channels mix 8 sources of scales 1 down to 0.01: the
  inputs' covariance is far from white, along no axis."""
  keys = jax.random.split(jax.random.key(seed), count)
  return [(jax.random.normal(k, (16, 6, 6, 8)) * _SCALES) @ _MIX
          for k in keys]


def _inputs(x, name):
  """What `name` sees of images `x`: the conv, the images; `wide`, their
  mean over positions unmixed (white); `thin`, that mean near a plane."""
  if name == "conv":
    return x
  pooled = jnp.mean(x, axis=(1, 2))
  if name == "wide":
    return pooled @ _MIX.T / _SCALES
  return pooled @ _PLANE @ _PLANE.T + 1e-3 * pooled


def _output_error(layer, small_layer, batches):
  bias = layer.bias[...]
  gap = sum(float(jnp.sum((layer(x) - small_layer(x)) ** 2)) for x in batches)
  norm = sum(float(jnp.sum((layer(x) - bias) ** 2)) for x in batches)
  return np.sqrt(gap / norm)


@pytest.mark.parametrize("factorization, path, rank", [
    ("svd", "thin", 2), ("tucker", "conv", (3, 6)), ("cp", "conv", 6),
    ("tt", "conv", 3), ("tt", "thin", 2)])
def test_data_aware_keeps_the_outputs_better_than_plain(factorization, path,
                                                        rank):
  net = Two(nnx.Rngs(0))
  calibration, held_out = _batches(0), _batches(1)
  kwargs = dict(include=(path,), ranks={path: rank})
  plain, _ = cj.compress(net, None, factorization, **kwargs)
  aware, report = cj.compress(net, None, factorization,
                              calibration=calibration, **kwargs)
  layer = getattr(net, path)
  errors = [_output_error(layer, getattr(small, path),
                          [_inputs(x, path) for x in held_out])
            for small in (plain, aware)]
  assert errors[1] < 0.8 * errors[0], errors
  # The report's output error is the one on the calibration data.
  measured = _output_error(layer, getattr(aware, path),
                           [_inputs(x, path) for x in calibration])
  assert report.layers[0].output_error == pytest.approx(measured, rel=1e-4)
  assert "output error" in report.table()


def test_data_aware_svd_is_the_best_rank_r_layer_on_the_data():
  """At rank R, SVD-LLM's whitened truncation leaves the least output
  error on the calibration data (up to the 1% ridge): no other rank-R
  weight tried does better."""
  net = Two(nnx.Rngs(0))
  calibration = _batches(0)
  aware, report = cj.compress(net, None, "svd", include=("wide",),
                              ranks={"wide": 3}, calibration=calibration)
  best = report.layers[0].output_error
  inputs = [_inputs(x, "wide") for x in calibration]
  kernel = np.asarray(net.wide.kernel[...])
  for seed in range(5):  # the plain SVD, and perturbations of the optimum
    trial = nnx.clone(aware.wide)
    if seed:
      noise = jax.random.normal(jax.random.key(seed), trial.left.shape)
      trial.left[...] = trial.left[...] + 0.01 * noise
    else:
      u, s, vt = np.linalg.svd(kernel, full_matrices=False)
      trial.left[...] = jnp.asarray(u[:, :3] * s[:3])
      trial.right[...] = jnp.asarray(vt[:3])
    assert _output_error(net.wide, trial, inputs) >= best * (1 - 1e-3)


def test_data_aware_svd_factors_split_the_scale_evenly():
  """Unwhitened, the input side holds L^{-T}: the two factors are split
  afresh as U S^(1/2), S^(1/2) V^T of their product, the product kept."""
  net = Two(nnx.Rngs(0))
  aware, _ = cj.compress(net, None, "svd", include=("thin",),
                         ranks={"thin": 3}, calibration=_batches(0))
  left = np.asarray(aware.thin.left[...], np.float64)
  right = np.asarray(aware.thin.right[...], np.float64)
  _, s, _ = np.linalg.svd(left @ right)
  np.testing.assert_allclose(left.T @ left, np.diag(s[:3]), atol=1e-4)
  np.testing.assert_allclose(right @ right.T, np.diag(s[:3]), atol=1e-4)
  # the product is the whitened truncation's: best on the data at rank 3
  plain, _ = cj.compress(net, None, "svd", include=("thin",),
                         ranks={"thin": 3})
  inputs = [_inputs(x, "thin") for x in _batches(0)]
  assert (_output_error(net.thin, aware.thin, inputs)
          < 0.8 * _output_error(net.thin, plain.thin, inputs))


def test_data_aware_tucker_and_tt_keep_the_plain_form():
  """A Tucker layer's whitened input factor, mapped back, is made
  orthonormal again, the core taking the rest; a TT-matrix's cores, mapped
  back mode by mode, left-orthonormal again, the last taking the scale:
  the forms TT-SVD and HOOI leave."""
  net = Two(nnx.Rngs(0))
  aware, _ = cj.compress(net, None, "tucker", include=("conv", "thin"),
                         ranks={"conv": (3, 6), "thin": (3, 4)},
                         calibration=_batches(0))
  matrices = [aware.conv.in_factor[...], aware.thin.factors[0][...]]
  train, _ = cj.compress(net, None, "tt", include=("thin",),
                         ranks={"thin": 2}, calibration=_batches(0))
  matrices += [core[...].reshape(-1, core.shape[-1])
               for core in train.thin.cores[:-1]]
  for matrix in matrices:
    matrix = np.asarray(matrix, np.float64)
    np.testing.assert_allclose(matrix.T @ matrix, np.eye(matrix.shape[1]),
                               atol=1e-5)


def test_calibrated_allocation_shares_the_budget_by_output_error():
  """`thin`'s inputs nearly lie in a plane, so a small rank keeps its
  outputs whatever its weight's spectrum: with calibration it gives
  weights up to `wide`, whose inputs are white."""
  net = Two(nnx.Rngs(0))
  kwargs = dict(include=("wide", "thin"))
  plain = cj.compression.allocate(net, 0.5, "svd", **kwargs)
  aware = cj.compression.allocate(net, 0.5, "svd", calibration=_batches(0),
                                  **kwargs)
  assert plain == {"thin": 2, "wide": 2}
  assert aware == {"thin": 1, "wide": 3}


def test_bad_calibration_gets_one_clear_error():
  net = Two(nnx.Rngs(0))
  with pytest.raises(ValueError, match="calibration is an iterator"):
    cj.compress(net, 0.5, "svd", include=("wide",),
                calibration=iter(_batches(0)))
  with pytest.raises(ValueError, match="init 'random' decomposes nothing"):
    cj.compress(net, 0.5, "svd", include=("wide",), init="random",
                calibration=_batches(0))
  with pytest.raises(ValueError, match=r"never called the layers at "
                     r"\['spare'\]"):
    cj.compress(net, 0.5, "svd", include=("wide", "spare"),
                calibration=_batches(0))
  with pytest.raises(ValueError, match="calibration holds no batch"):
    cj.compress(net, 0.5, "svd", include=("wide",), calibration=[])
  with pytest.raises(ValueError, match="must run eagerly"):
    cj.calibration.input_covariances(jax.jit(lambda x: net(x)),
                                     {"wide": net.wide}, _batches(0, 1))


@pytest.mark.slow
def test_data_aware_attention_output_projection():
  """attn/out contracts two input axes (heads, head_dim): "svd" whitens
  them together, "tucker" each by its own covariance (the mode's)."""
  from tests.test_compress import Attention

  net = Attention(nnx.Rngs(0))
  net.embed.embedding[...] = net.embed.embedding[...] * jnp.logspace(0, -2,
                                                                     32)
  batches = [jax.random.randint(jax.random.key(i), (4, 7), 0, 50)
             for i in range(3)]
  for factorization, rank in (("svd", 6), ("tucker", (3, 6, 12))):
    kwargs = dict(include=("attn/out",), ranks={"attn/out": rank})
    plain, _ = cj.compress(net, None, factorization, **kwargs)
    aware, report = cj.compress(net, None, factorization,
                                calibration=batches, **kwargs)
    plain_error = cj.calibration.output_errors(
        net, {"out": (net.attn.out, plain.attn.out)}, batches)["out"]
    assert report.layers[0].output_error < 0.8 * plain_error, factorization
