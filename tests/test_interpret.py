"""cpac_jax.interpret: what the factors say about features."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cpac_jax import interpret, models
from cpac_jax.interpret import experiments
from cpac_jax.layers import CPConv


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


def test_ttl_importance_of_an_always_zero_row_is_zero():
  model = models.TTLMLP(factorization="tucker", rank=(3, 3, 4),
                        input_shape=(8, 8, 1), hidden_shape=(16,),
                        num_classes=3, rngs=nnx.Rngs(0))
  x = jax.random.uniform(jax.random.key(0), (64, 8, 8)).at[:, 0].set(0.0)
  y = jnp.arange(64) % 3
  importance = interpret.tucker_factor_importance(model, (x, y))
  (rows, columns, hidden), = importance.values()
  assert float(rows[0]) == 0.0
  assert rows.shape == (8,) and columns.shape == (8,) and hidden.shape == (16,)
  np.testing.assert_allclose(jnp.sum(rows), 1.0, rtol=1e-5)
  grid = interpret.importance_map([rows, columns])
  assert grid.shape == (8, 8) and float(jnp.sum(grid[0])) == 0.0


def test_ttl_importance_ranks_planted_rows_on_top():
  result = experiments.synthetic_ttl(seed=0, size=12, planted_rows=(2, 9),
                                     steps=200)
  assert sorted(result["top_rows"]) == [2, 9]
  assert result["accuracy"] > 0.9


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
