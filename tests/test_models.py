"""The models: pooling, VGG-16 and TT variants, and the shoot-outs' matched
budgets."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cpac_jax import models
from cpac_jax.config import override
from tests.conftest import load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_max_pool_2x2_is_nnx_max_pool_without_a_scatter():
  from cpac_jax.models.cnn import max_pool_2x2
  from cpac_jax.models.vgg import VGG16

  x = jax.random.normal(jax.random.key(0), (2, 7, 6, 3))  # odd: cropped
  pool = lambda x: nnx.max_pool(x, (2, 2), strides=(2, 2))
  np.testing.assert_array_equal(max_pool_2x2(x), pool(x))
  loss = lambda f: lambda x: jnp.sum(jnp.sin(f(x)))
  np.testing.assert_allclose(jax.grad(loss(max_pool_2x2))(x),
                             jax.grad(loss(pool))(x), rtol=1e-6)
  # VGG-16's step pools without XLA's select-and-scatter.
  net = VGG16(rngs=nnx.Rngs(0))
  net.eval()  # batch statistics read, not updated
  jaxpr = jax.make_jaxpr(jax.grad(lambda x: jnp.sum(net(x))))(
      jnp.ones((1, 32, 32, 3)))
  assert "select_and_scatter" not in str(jaxpr)
  assert "reduce_window" not in str(jaxpr)

@pytest.mark.parametrize("factorization", ["dense", "tucker", "cp"])
def test_vgg16_variants_build_with_fewer_parameters(factorization):
  from flax import nnx

  from cpac_jax.layers import count_params

  config = load_config("ttl_vgg16_cifar10")
  override(config, "model.factorization", factorization)
  override(config, "model.rank", 0.1 if factorization == "cp" else 4)
  model = nnx.eval_shape(lambda: models.build(config.model, (32, 32, 3), 10,
                                              nnx.Rngs(0)))
  ours, dense = models.count_factorized(model)
  if factorization == "dense":
    assert ours == dense == 0
  else:
    assert 0 < ours < dense / 5
  assert count_params(model) > 0

@pytest.mark.slow
@pytest.mark.parametrize("name,kwargs", [
    ("cnn", {}), ("ttl_mlp", {"hidden_shape": (15, 20)})])
def test_tt_variants_build_and_count_their_compression(name, kwargs):
  import jax.numpy as jnp
  import ml_collections
  from flax import nnx

  from cpac_jax import layers

  model = ml_collections.ConfigDict(
      {"name": name, "factorization": "tt", "rank": 0.1, "kwargs": kwargs})
  net = models.build(model, (28, 28, 1), 10, nnx.Rngs(0))
  tt = [node for _, node in nnx.iter_graph(net)
        if isinstance(node, (layers.TTConv, layers.TTDense))]
  assert tt and net(jnp.zeros((2, 28, 28, 1))).shape == (2, 10)
  ours, dense = models.count_factorized(net)
  assert ours == sum(layers.count_params(t) - t.bias.size for t in tt)
  assert 0.05 < ours / dense <= 0.1

def test_shootout_families_get_matched_budgets_of_the_hidden_layer():
  from flax import nnx

  from cpac_jax.config import expand

  config = load_config("shootout_ttl_mnist")
  weights = {}
  for _, run in expand(config):
    if run.seed:
      continue
    net = nnx.eval_shape(lambda run=run: models.build(
        run.model, (28, 28, 1), 10, nnx.Rngs(0)))
    ours, _ = models.count_factorized(net)
    if net.bottleneck is not None:
      ours = net.bottleneck.kernel.size + net.hidden.kernel.size
    budget = run.model.rank if ours else 1.0
    if run.model.factorization == "dense" and net.bottleneck is not None:
      budget = next(f for f in (0.5, 0.1, 0.03, 0.01)
                    if 1084 * int(784 * 300 * f / 1084) == ours)
    weights.setdefault(budget, []).append(ours or 784 * 300)
  assert sorted(weights) == [0.01, 0.03, 0.1, 0.5, 1.0]
  for budget, counts in weights.items():
    if budget < 1:  # Tucker, TT, low-rank dense: each within the budget,
      assert len(counts) == 3  # none wasting more than a third of it
      assert all(2 / 3 * budget * 235_200 <= c <= budget * 235_200
                 for c in counts), (budget, counts)

@pytest.mark.slow
def test_cpac_shootout_holds_matched_budgets_of_the_second_conv():
  import jax.numpy as jnp
  from flax import nnx

  from cpac_jax.config import expand

  config = load_config("shootout_cpac_mnist")
  weights = {}
  for _, run in expand(config):
    if run.seed:
      continue
    net = models.build(run.model, (28, 28, 1), 10, nnx.Rngs(0))
    assert isinstance(net.convs[0], nnx.Conv)  # the first conv stays dense
    assert net(jnp.zeros((1, 28, 28, 1))).shape == (1, 10)
    ours, dense = models.count_factorized(net)
    if run.model.factorization == "dense":
      assert ours == 0
      continue
    assert dense == 576 and type(net.convs[1]).__name__ == {
        "cp": "CPConv", "tucker": "TuckerConv", "tt": "TTConv"}[
            run.model.factorization]
    weights.setdefault(run.model.rank, []).append(ours)
  assert sorted(weights) == [0.05, 0.15, 0.25, 0.5]
  for budget, counts in weights.items():  # CP, Tucker, TT: each within the
    assert len(counts) == 3               # budget, none below half of it
    assert all(budget * 576 / 2 <= c <= budget * 576 for c in counts), (
        budget, counts)

@pytest.mark.slow
def test_cnn_shootout_holds_matched_budgets_of_the_four_convs():
  from flax import nnx

  from cpac_jax.config import expand

  weights = {}
  for _, run in expand(load_config("shootout_cnn_fashion_mnist")):
    if run.seed:
      continue
    net = nnx.eval_shape(lambda run=run: models.build(
        run.model, (28, 28, 1), 10, nnx.Rngs(0)))
    assert isinstance(net.convs[0], nnx.Conv)  # the first conv stays dense
    ours, dense = models.count_factorized(net)
    if run.model.factorization != "dense":
      assert dense == 138_240
      weights.setdefault(run.model.rank, []).append(ours)
  assert sorted(weights) == [0.01, 0.1, 0.5]
  for budget, counts in weights.items():  # CP, Tucker, TT: each within the
    assert len(counts) == 3               # budget, none below 70% of it
    assert all(0.7 * budget * 138_240 <= c <= budget * 138_240
               for c in counts), (budget, counts)


# Every model and factorization the registry builds, on small inputs.
VARIANTS = [(name, factorization)
            for name, (_, factorizations, _) in models.MODELS.items()
            for factorization in factorizations]
_SHAPES = {"vgg16": (32, 32, 3)}  # five 2x2 pools; the rest take (12, 12, 1)
_KWARGS = {"cnn": {"widths": (4, "M", 4, 8)},
           "ttl_mlp": {"hidden_shape": (6, 5)},  # TT: as many modes as 12x12
           "vit": {"depth": 1, "width": 8, "heads": 2, "patch": 4}}


def _captured(name, factorization, dtype):
  """The model `name` built in `dtype` and what each of its layers returns
  (`nnx.capture`) in train and eval mode, all abstract: dtypes, no compute."""
  import ml_collections

  model = ml_collections.ConfigDict(
      {"name": name, "factorization": factorization, "rank": 0.5,
       "kwargs": _KWARGS.get(name, {})})
  shape = _SHAPES.get(name, (12, 12, 1))

  def build_and_run():
    net = models.build(model, shape, 10, nnx.Rngs(0), dtype=dtype)
    outputs = {}
    for mode in ("train", "eval"):
      getattr(net, mode)()
      _, outputs[mode] = nnx.capture(
          net, nnx.Intermediate, method_outputs=nnx.Intermediate)(
              jnp.zeros((2, *shape)))
    return net, outputs

  return nnx.eval_shape(build_and_run)


@pytest.mark.parametrize("name,factorization", VARIANTS)
def test_every_model_computes_in_bfloat16_with_float32_state(name,
                                                             factorization):
  net, outputs = _captured(name, factorization, "bfloat16")
  layers = {path: node.dtype for path, node in nnx.iter_graph(net)
            if isinstance(node, nnx.Module) and hasattr(node, "dtype")}
  assert layers and set(layers.values()) == {jnp.dtype(jnp.bfloat16)}, layers
  for mode, captured in outputs.items():
    calls = {path[:-1]: value for path, value in nnx.to_flat_state(captured)
             if path[-1] == "__call__"}
    assert set(calls) >= set(layers) | {()}, mode  # every layer, the model
    dtypes = {path: value.get_value()[0].dtype for path, value in calls.items()}
    assert set(dtypes.values()) == {jnp.dtype(jnp.bfloat16)}, (mode, dtypes)
  state = nnx.to_flat_state(nnx.state(net, nnx.Any(nnx.Param,
                                                   nnx.BatchStat)))
  assert {value.get_value().dtype for _, value in state} == {
      jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("dtype", models.DTYPES)
def test_cnn_computes_in_each_dtype(dtype):
  _, outputs = _captured("cnn", "cp", dtype)
  assert {value.get_value()[0].dtype
          for path, value in nnx.to_flat_state(outputs["train"])
          if path[-1] == "__call__"} == {jnp.dtype(dtype)}


def test_build_refuses_an_unknown_dtype():
  import ml_collections

  model = ml_collections.ConfigDict(
      {"name": "ttl_mlp", "factorization": "dense", "rank": 2})
  with pytest.raises(ValueError, match=r"unknown dtype 'float64'; choose one "
                     r"of \('float32', 'bfloat16', 'float16'\)"):
    models.build(model, (28, 28, 1), 10, nnx.Rngs(0), dtype="float64")
