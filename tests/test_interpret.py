"""cpac_jax.interpret: what the factors say about features."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from cpac_jax import interpret, models
from cpac_jax.interpret import experiments, importance, validation
from cpac_jax.layers import CPConv


@pytest.mark.slow
def test_cp_significance_is_the_map_norm_at_rank_one():
  conv = CPConv(3, 5, (3, 3), rank=1, rngs=nnx.Rngs(0))
  scores = interpret.cp_feature_significance(conv)
  kernel = conv.kernel_tensor()
  np.testing.assert_allclose(scores["output"],
                             jnp.linalg.norm(kernel.reshape(-1, 5), axis=0),
                             rtol=1e-5)
  np.testing.assert_allclose(
      scores["input"],
      jnp.linalg.norm(jnp.moveaxis(kernel, 2, 0).reshape(3, -1), axis=1),
      rtol=1e-5)


@pytest.mark.parametrize("rank", [2, 6])
def test_cp_significance_bounds_the_map_norm_and_tracks_zeroed_rows(rank):
  conv = CPConv(4, 6, (3, 3), rank=rank, rngs=nnx.Rngs(1))
  conv.out_factor[...] = conv.out_factor[...].at[2].set(0.0)
  scores = interpret.cp_feature_significance(conv)["output"]
  norms = jnp.linalg.norm(conv.kernel_tensor().reshape(-1, 6), axis=0)
  assert bool(jnp.all(scores >= norms * (1 - 1e-5)))
  assert float(scores[2]) == 0.0 and float(norms[2]) == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("method", importance.METHODS[:3] + ("gradient",))
def test_ttl_importance_of_an_always_zero_row_is_zero(method):
  model = models.TTLMLP(factorization="tucker", rank=(3, 3, 4),
                        input_shape=(8, 8, 1), hidden_shape=(16,),
                        num_classes=3, rngs=nnx.Rngs(0))
  x = jax.random.uniform(jax.random.key(0), (64, 8, 8)).at[:, 0].set(0.0)
  y = jnp.arange(64) % 3
  found = interpret.tucker_factor_importance(model, (x, y), method)
  (rows, columns, hidden), = found.values()
  assert float(rows[0]) == 0.0
  assert rows.shape == (8,) and columns.shape == (8,) and hidden.shape == (16,)
  if method in ("contribution", "gradient"):  # shares
    np.testing.assert_allclose(jnp.sum(rows), 1.0, rtol=1e-5)
    grid = interpret.importance_map([rows, columns])
    assert grid.shape == (8, 8) and float(jnp.sum(grid[0])) == 0.0


@pytest.mark.slow
def test_ttl_importance_ranks_planted_rows_on_top():
  result = experiments.synthetic_ttl(seed=0, size=12, planted_rows=(2, 9),
                                     steps=200)
  assert sorted(result["top_rows"]) == [2, 9]
  assert result["accuracy"] > 0.9


def _small_ttl(seed=0):
  model = models.TTLMLP(factorization="tucker", rank=(3, 3, 4),
                        input_shape=(8, 8, 1), hidden_shape=(16,),
                        num_classes=3, rngs=nnx.Rngs(seed))
  x = jax.random.normal(jax.random.key(seed), (64, 8, 8, 1))
  return model, x, jnp.arange(64) % 3


@pytest.mark.slow
def test_weight_importance_is_the_norm_of_each_weight_slice():
  model, _, _ = _small_ttl()
  weight = model.hidden.weight_tensor()
  rows, columns, hidden = importance._slice_norms(model.hidden)
  np.testing.assert_allclose(rows, jnp.linalg.norm(weight, axis=(1, 2)),
                             rtol=1e-4)
  np.testing.assert_allclose(columns, jnp.linalg.norm(weight, axis=(0, 2)),
                             rtol=1e-4)
  np.testing.assert_allclose(hidden, jnp.linalg.norm(weight, axis=(0, 1)),
                             rtol=1e-4)
  shares = interpret.tucker_factor_importance(model, None, "weight")
  np.testing.assert_allclose(shares["hidden"][0], rows / jnp.sum(rows),
                             rtol=1e-5)


@pytest.mark.slow
def test_occlusion_and_permutation_are_the_loss_rise_by_hand():
  model, x, y = _small_ttl()

  def loss(inputs):
    return float(optax.softmax_cross_entropy_with_integer_labels(
        model(inputs), y).mean())

  occluded = interpret.tucker_factor_importance(model, (x, y), "occlusion")
  rise = loss(x.at[:, 5].set(jnp.mean(x[:, 5], axis=0))) - loss(x)
  assert float(occluded["hidden"][0][5]) == pytest.approx(rise, abs=1e-5)
  # a hidden unit (output mode) occluded: its activation set to its mean
  shuffled = interpret.tucker_factor_importance(model, (x, y), "permutation",
                                                repeats=3, seed=1)
  assert all(v.shape == (s,) for v, s in zip(shuffled["hidden"], (8, 8, 16)))
  again = interpret.tucker_factor_importance(model, (x, y), "permutation",
                                             repeats=3, seed=1)
  np.testing.assert_array_equal(shuffled["hidden"][2], again["hidden"][2])


@pytest.mark.slow
def test_contribution_of_a_constant_row_is_zero():
  model, x, y = _small_ttl()
  x = x.at[:, 4].set(0.7)  # never varies: passes nothing to the output
  rows, _, hidden = interpret.tucker_factor_importance(
      model, (x, y), "contribution")["hidden"]
  assert float(rows[4]) == 0.0
  np.testing.assert_allclose(jnp.sum(hidden), 1.0, rtol=1e-5)


@pytest.mark.parametrize("method, batches, match", [
    ("nope", None, "method must be one of"),
    ("occlusion", None, "needs batches"),
    ("occlusion", [], "no batches"),
])
def test_tucker_importance_rejects_bad_requests(method, batches, match):
  model, _, _ = _small_ttl()
  with pytest.raises(ValueError, match=match):
    interpret.tucker_factor_importance(model, batches, method)


@pytest.mark.slow
def test_tucker_importance_needs_a_tucker_layer():
  net = models.CPACNet(num_layers=1, rank=2, input_shape=(10, 10, 1),
                       num_classes=3, num_filters=4, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="holds no TuckerDense"):
    interpret.tucker_factor_importance(net, None, "weight")


@pytest.fixture(scope="module")
def converged():
  """The planted-rows and 3-mode designs, trained to convergence, every
  method scored (small sizes)."""
  return [validation.validate_design(name, seed=0, train_examples=4096,
                                     epochs=8, repeats=2)
          for name in ("planted rows", "3-mode input")]


@pytest.mark.slow
@pytest.mark.parametrize("method", [*importance.METHODS[:-1],
                                    validation.ACCUMULATED])
def test_importance_ranks_planted_features_on_a_converged_model(converged,
                                                                method):
  for result in converged:
    assert result["train_accuracy"] > 0.97, result["design"]
    for mode, entry in result["modes"].items():
      assert entry["truth_top_k_recovery"] == 1.0
      assert entry["methods"][method]["top_k_recovery"] == 1.0, (
          result["design"], mode)


@pytest.mark.slow
def test_feature_selection_removes_maps_and_restores_the_layer():
  net = models.CPACNet(num_layers=1, rank=2, input_shape=(10, 10, 1),
                       num_classes=3, num_filters=4, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (30, 10, 10, 1))
  y = jnp.arange(30) % 3
  conv = net.convs[0]
  before = conv.out_factor[...]
  accuracies = interpret.feature_selection(net, conv, x, y, [3, 0, 1, 2])
  assert len(accuracies) == 5
  np.testing.assert_array_equal(conv.out_factor[...], before)
  # every map removed: the logits are the classifier's bias alone, so all
  # examples get one class
  bias_class = int(jnp.argmax(net.fcs[-1].bias[...]))
  assert accuracies[-1] == pytest.approx(float(jnp.mean(y == bias_class)))


def test_interpret_is_reachable_from_the_package_as_designed():
  import cpac_jax as cj

  assert cj.interpret.cp_feature_significance is (
      interpret.cp_feature_significance)
  with pytest.raises(AttributeError, match="no attribute 'nope'"):
    cj.nope  # noqa: B018


def test_paired_tests_against_random_orders():
  rng = np.random.default_rng(0)
  models, maps = 10, 8
  base = np.linspace(0.98, 0.1, maps + 1)
  random = [[list(base + rng.normal(0, 0.01, maps + 1)) for _ in range(20)]
            for _ in range(models)]
  better = [list(base + 0.02 + rng.normal(0, 0.005, maps + 1))
            for _ in range(models)]
  same = [list(base + rng.normal(0, 0.01, maps + 1)) for _ in range(models)]
  tests = experiments.paired_tests({"curves": {
      "better": better, "same": same, "random order": random}})
  assert tests["better"]["n"] == 10 and tests["better"]["wins"] == 10
  assert tests["better"]["mean_gain_points"] == pytest.approx(2.0, abs=0.3)
  assert tests["better"]["wilcoxon_p"] < 0.01
  assert tests["better"]["paired_t_p"] < 0.001
  assert abs(tests["same"]["mean_gain_points"]) < 0.3
