"""Whole-model compression (`cj.compress`): layers found wherever they sit,
replaced under one budget, the input left alone; the global allocation
against the uniform one; the errors; the compress-then-fine-tune runs of a
sweep, resumed and restored."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import cpac_jax as cj
from cpac_jax import compression, extensions, models, sweep, train
from cpac_jax.config import (
  build_model,
  expand,
  run_key,
  teacher_config,
  validate,
)
from tests.conftest import load_config, tiny


class Block(nnx.Module):
  def __init__(self, rngs):
    self.conv = nnx.Conv(8, 12, (3, 3), rngs=rngs)


class Net(nnx.Module):
  """Convs as an attribute, in a list and in a nested module; a Linear."""

  def __init__(self, rngs):
    self.stem = nnx.Conv(3, 8, (3, 3), rngs=rngs)
    self.blocks = nnx.List([Block(rngs),
                            nnx.Conv(12, 16, (3, 3), strides=2, rngs=rngs)])
    self.head = nnx.Linear(16, 10, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.stem(x))
    x = nnx.relu(self.blocks[0].conv(x))
    x = nnx.relu(self.blocks[1](x))
    return self.head(jnp.mean(x, axis=(1, 2)))


def _planted(shape, ranks, seed):
  """A kernel of Tucker-2 ranks `ranks` on its channel modes."""
  keys = jax.random.split(jax.random.key(seed), 3)
  core = jax.random.normal(keys[0], shape[:-2] + tuple(ranks))
  u = jax.random.normal(keys[1], (shape[-2], ranks[0]))
  v = jax.random.normal(keys[2], (shape[-1], ranks[1]))
  return jnp.einsum("...ab,ia,ob->...io", core, u, v)


@pytest.mark.slow
def test_compress_replaces_every_layer_and_leaves_the_input_alone():
  net = Net(nnx.Rngs(0))
  before = jax.tree.map(np.array, nnx.state(net, nnx.Param))
  x = jax.random.normal(jax.random.key(1), (2, 9, 9, 3))
  small, report = cj.compress(net, 0.3, "tucker")
  assert [layer.path for layer in report.layers] == [  # nnx's graph order
      "blocks/0/conv", "blocks/1", "head", "stem"]
  assert isinstance(small.stem, cj.layers.TuckerConv)
  assert isinstance(small.blocks[0].conv, cj.layers.TuckerConv)
  assert isinstance(small.blocks[1], cj.layers.TuckerConv)
  assert small.blocks[1].strides == (2, 2)
  assert isinstance(small.head, cj.layers.TuckerDense)
  assert isinstance(net.stem, nnx.Conv)  # the input untouched
  jax.tree.map(np.testing.assert_array_equal, before,
               jax.tree.map(np.array, nnx.state(net, nnx.Param)))
  assert report.params_after <= 0.3 * report.params_before
  assert report.params_before == 3 * 8 * 9 + 8 * 12 * 9 + 12 * 16 * 9 + 160
  assert small(x).shape == (2, 10)
  # Each layer's error is its rebuilt weight's.
  layer = report.layers[0]
  rebuilt = small.blocks[0].conv.kernel_tensor()
  weight = net.blocks[0].conv.kernel[...]
  np.testing.assert_allclose(
      layer.error, jnp.linalg.norm(rebuilt - weight) / jnp.linalg.norm(weight),
      rtol=1e-4)
  assert "| blocks/0/conv | Conv(8->12, 3x3) | tucker |" in report.table()
  # At full ranks the compressed model computes the original.
  full = {"stem": (3, 8), "blocks/0/conv": (8, 12), "blocks/1": (12, 16),
          "head": (10, 10)}
  exact, exact_report = cj.compress(net, None, "tucker", ranks=full)
  np.testing.assert_allclose(exact(x), net(x), atol=1e-4)
  assert "| tucker | ranks given |" in exact_report.table()


@pytest.mark.slow
def test_compress_refuses_ranks_over_a_given_budget():
  net = Net(nnx.Rngs(0))
  _, report = cj.compress(net, 0.3, "tucker")
  assert report.params_after <= 0.3 * report.params_before
  # The same ranks under the same budget are accepted, as they fit.
  _, again = cj.compress(net, 0.3, "tucker", ranks=report.ranks())
  assert again.ranks() == report.ranks()
  with pytest.raises(ValueError, match=r"keep \d+ of the \d+ weights, more "
                     r"than budget 0.1 allows"):
    cj.compress(net, 0.1, "tucker", ranks=report.ranks())


@pytest.mark.slow
def test_cp_filters_and_random_init():
  net = Net(nnx.Rngs(0))
  small, report = cj.compress(net, 0.2, "cp", exclude=("stem",),
                              allocation="uniform")
  assert [layer.path for layer in report.layers] == ["blocks/0/conv",
                                                     "blocks/1"]
  assert isinstance(small.blocks[1], cj.layers.CPConv)
  assert isinstance(small.stem, nnx.Conv) and isinstance(small.head,
                                                         nnx.Linear)
  for layer in report.layers:  # uniform: each within its own share
    assert layer.params_after <= 0.2 * layer.params_before
  # The same architecture drawn afresh: ranks as given, no error.
  fresh, again = cj.compress(net, 0.2, "cp", exclude=("stem",),
                             ranks=report.ranks(), init="random")
  assert again.ranks() == report.ranks()
  assert {layer.error for layer in again.layers} == {None}
  assert cj.count_params(fresh) == cj.count_params(small)
  only, _ = cj.compress(net, 0.5, "tucker", include=(nnx.Linear,))
  assert isinstance(only.head, cj.layers.TuckerDense)
  assert isinstance(only.stem, nnx.Conv)


@pytest.mark.slow
def test_global_allocation_keeps_more_than_uniform_at_the_same_budget():
  """A layer of low rank needs little; the global rule gives the rest to
  the full-rank layer, keeping more of the weights' energy in all."""
  net = Net(nnx.Rngs(0))
  net.blocks[1].kernel[...] = _planted((3, 3, 12, 16), (2, 2), 0)
  results = {}
  for allocation in ("global", "uniform"):
    _, report = cj.compress(net, 0.25, "tucker", include=("blocks/*",),
                            allocation=allocation)
    assert report.params_after <= 0.25 * report.params_before
    results[allocation] = report
  kept = {name: np.prod([1 - layer.error**2 for layer in report.layers])
          for name, report in results.items()}
  assert kept["global"] > kept["uniform"] + 0.05
  ranks = results["global"].ranks()
  assert ranks["blocks/1"][0] <= 4  # the planted rank-2 layer stays small
  assert results["global"].layers[1].error < 1e-3  # blocks/1


@pytest.mark.slow
def test_bad_requests_get_one_clear_error():
  net = Net(nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"budget must be a float in \(0, 1\]"):
    cj.compress(net, 1.5)
  with pytest.raises(ValueError, match="budget must be"):
    cj.compress(net, 0)
  with pytest.raises(ValueError, match=r"budget 99999 weights is not in "
                     r"1\.\.2968"):
    cj.compress(net, 99999)
  with pytest.raises(ValueError, match="below the .* that the smallest ranks"):
    cj.compress(net, 40)
  with pytest.raises(ValueError, match="exclude filter 'convs/9' matches no"):
    cj.compress(net, exclude=("convs/9",))
  with pytest.raises(ValueError, match="Linear at 'head' can't take "
                     "factorization 'cp'"):
    cj.compress(net, 0.5, "cp", include=("head",))
  with pytest.raises(ValueError, match="factorization must be one of"):
    cj.compress(net, 0.5, "tr")
  with pytest.raises(ValueError, match="allocation must be one of"):
    cj.compress(net, 0.5, allocation="greedy")
  with pytest.raises(ValueError, match="ranks are given for"):
    cj.compress(net, 0.5, ranks={"stem": (2, 2)})
  grouped = Net(nnx.Rngs(0))
  grouped.stem = nnx.Conv(3, 6, (3, 3), feature_group_count=3,
                          rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="stem.*grouped"):
    cj.compress(grouped, 0.5)



class Attention(nnx.Module):
  """Flax's own weight layers: an embedding, a (1-D) conv, multi-head
  attention (four LinearGeneral projections), Linear MLPs, an Einsum."""

  def __init__(self, rngs):
    self.embed = nnx.Embed(50, 32, rngs=rngs)
    self.conv = nnx.Conv(32, 32, (3,), rngs=rngs)
    self.attn = nnx.MultiHeadAttention(num_heads=4, in_features=32,
                                       decode=False, rngs=rngs)
    self.mlp = nnx.List([nnx.Linear(32, 64, rngs=rngs),
                         nnx.Linear(64, 32, rngs=rngs)])
    self.mix = nnx.Einsum("btd,dh->bth", (32, 16), rngs=rngs)
    self.head = nnx.Linear(16, 10, rngs=rngs)

  def __call__(self, ids):
    x = self.conv(self.embed(ids))
    x = x + self.attn(x)
    x = x + self.mlp[1](nnx.gelu(self.mlp[0](x)))
    return self.head(self.mix(x))


def _planted_attention():
  """`Attention` with its table and every Linear/LinearGeneral kernel of
  matrix rank 4 and the conv's of Tucker-2 ranks (6, 6): budgets of half
  its weights hold them exactly."""
  net = Attention(nnx.Rngs(0))
  for path, node in compression.compressible(net, "svd"):
    weight = node.embedding if path == "embed" else node.kernel
    rows = (50 if path == "embed" else 32 if path == "mix" else
            np.prod(cj.layers.linear_features(node, path)[0]))
    matrix = np.asarray(weight[...]).reshape(rows, -1)
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    weight[...] = jnp.asarray(((u[:, :4] * s[:4]) @ vt[:4]).reshape(
        weight.shape))
  net.conv.kernel[...] = _planted((3, 32, 32), (6, 6), seed=5) / 30
  return net


@pytest.mark.slow
def test_compress_replaces_attention_projections_and_names_what_it_leaves():
  net = _planted_attention()
  ids = jax.random.randint(jax.random.key(0), (2, 7), 0, 50)
  before = net(ids)
  small, report = cj.compress(net, 0.5, "svd")
  assert sorted(layer.path for layer in report.layers) == [
      "attn/key", "attn/out", "attn/query", "attn/value", "embed", "head",
      "mix", "mlp/0", "mlp/1"]
  assert isinstance(small.attn.query, cj.layers.LowRankDense)
  assert isinstance(small.embed, cj.layers.LowRankEmbed)
  assert isinstance(small.mix, cj.layers.LowRankDense)
  assert small.attn.out.in_shape == (4, 8)
  assert report.left_alone == ("conv (Conv)",)
  assert "Left as they were: conv (Conv)." in report.table()
  assert report.params_after <= 0.5 * report.params_before
  np.testing.assert_allclose(small(ids), before, atol=1e-3)
  # Tucker takes the conv too, and each projection's three modes.
  small, report = cj.compress(net, 0.5, "tucker")
  assert report.left_alone == ("embed (Embed)",)
  assert isinstance(small.attn.key, cj.layers.TuckerDense)
  assert len(report.ranks()["attn/key"]) == 3
  np.testing.assert_allclose(small(ids), before, atol=1e-3)



class EinsumBlock(nnx.Module):
  """Attention and an MLP written as `nnx.Einsum`s, as Gemma writes them,
  and one einsum no LinearGeneral computes (a kernel per position)."""

  def __init__(self, rngs):
    self.query = nnx.Einsum("btd,ndh->btnh", (4, 16, 8), rngs=rngs)
    self.out = nnx.Einsum("btnh,nhd->btd", (4, 8, 16), rngs=rngs)
    self.mlp = nnx.Einsum("...d,df->...f", (16, 24), (24,), rngs=rngs)
    self.per_position = nnx.Einsum("btf,tfo->bto", (5, 24, 6), rngs=rngs)

  def __call__(self, x):
    x = x + self.out(self.query(x))
    return self.per_position(nnx.gelu(self.mlp(x)))


@pytest.mark.slow
def test_compress_takes_an_einsum_as_the_linear_general_it_computes(
    tmp_path):
  net = EinsumBlock(nnx.Rngs(0))
  net.mlp.bias[...] = jnp.linspace(-1.0, 1.0, 24)
  x = jax.random.normal(jax.random.key(1), (2, 5, 16))
  before = net(x)
  # At full ranks every factorization computes what the einsums did.
  full = {"svd": {"query": 16, "out": 16, "mlp": 16},
          "tucker": {"query": (16, 4, 8), "out": (4, 8, 16),
                     "mlp": (16, 24)}}
  for kind, ranks in full.items():
    small, report = cj.compress(net, None, kind, ranks=ranks)
    assert report.left_alone == ("per_position (Einsum)",)
    assert {layer.path: layer.layer for layer in report.layers}["query"] == (
        "Einsum('btd,ndh->btnh', (4, 16, 8))")
    np.testing.assert_allclose(small(x), before, atol=1e-5)
  assert isinstance(small.query, cj.layers.TuckerDense)
  assert small.query.out_shape == (4, 8)
  small, report = cj.compress(net, None, "tt", include=("mlp",),
                              ranks={"mlp": 64})
  assert isinstance(small.mlp, cj.layers.TTDense)
  np.testing.assert_allclose(small(x), before, atol=1e-5)
  assert sorted(cj.compression.allocate(net, 0.5, "svd")) == [
      "mlp", "out", "query"]
  # Data-aware, saved and rebuilt from the einsums' shapes alone.
  small, report = cj.compress(net, 0.5, "svd", calibration=[x])
  assert all(layer.output_error is not None for layer in report.layers)
  cj.compression.save(tmp_path / "small", small, report)
  back = cj.compression.load(tmp_path / "small",
                             nnx.eval_shape(lambda: EinsumBlock(nnx.Rngs(3))))
  np.testing.assert_array_equal(back(x), small(x))
  with pytest.raises(ValueError, match="Einsum at 'per_position' can't take "
                     "factorization 'tucker'.*'btf,tfo->bto' does not"):
    cj.compress(net, 0.5, "tucker", include=("per_position",))
  with pytest.raises(ValueError, match="Einsum at 'out' can't take "
                     "factorization 'tt'.*one input and one output axis\\); "
                     "exclude"):
    cj.compress(net, 0.5, "tt", include=("out",))
  # Sized from the trained einsums, to train from scratch too.
  assert cj.compress(net, 0.3, "tucker", init="random")[1].ranks() == (
      cj.compression.allocate(net, 0.3, "tucker"))


# A factorization per layer: the first filter that matches chooses.
MIXED = {nnx.Conv: "tt", nnx.Embed: "svd", nnx.LinearGeneral: "tucker",
         "mlp/*": "tt"}


@pytest.mark.slow
def test_compress_mixes_factorizations_under_one_budget():
  net = _planted_attention()
  ids = jax.random.randint(jax.random.key(0), (2, 7), 0, 50)
  small, report = cj.compress(net, 0.6, MIXED)
  kinds = {layer.path: layer.factorization for layer in report.layers}
  assert kinds == {"attn/key": "tucker", "attn/out": "tucker",
                   "attn/query": "tucker", "attn/value": "tucker",
                   "conv": "tt", "embed": "svd", "mlp/0": "tt",
                   "mlp/1": "tt"}
  assert report.left_alone == ("head (Linear)", "mix (Einsum)")
  assert report.factorization == ("Conv: tt, Embed: svd, LinearGeneral: "
                                  "tucker, mlp/*: tt")
  assert report.params_after <= 0.6 * report.params_before
  assert isinstance(small.conv, cj.layers.TTConv)
  assert isinstance(small.mlp[0], cj.layers.TTDense)
  assert (small.mlp[0].in_shape, small.mlp[0].out_shape) == (
      compression.tt_shapes(32, 64))
  # The planted conv (Tucker-2 ranks 6, 6) is a train of ranks 6 exactly.
  assert report.ranks()["conv"] >= 6
  assert next(r.error for r in report.layers if r.path == "conv") < 1e-5
  # No layer keeps more weights than it had.
  assert all(r.params_after <= r.params_before for r in report.layers)
  # Each error is the weight's the new layer represents.
  for layer in report.layers:
    if layer.path.startswith("mlp"):
      old = net.mlp[int(layer.path[-1])].kernel[...]
      new = small.mlp[int(layer.path[-1])].weight_tensor().reshape(old.shape)
      assert layer.error == pytest.approx(
          float(jnp.linalg.norm(old - new) / jnp.linalg.norm(old)), rel=1e-3)
  # At every layer's largest rank but the TT-matrices', the outputs stay.
  exact = {**MIXED, "mlp/*": "svd"}
  small, _ = cj.compress(net, 1.0, exact)
  np.testing.assert_allclose(small(ids), net(ids), atol=1e-3)


def test_rank_multiple_rounds_every_rank_of_the_allocation():
  net = _planted_attention()
  ranks = cj.compression.allocate(net, 0.5, "svd", rank_multiple=4)
  assert ranks["head"] in (4, 8, 10)  # 10: its whole rank
  assert all(r % 4 == 0 for p, r in ranks.items() if p != "head")
  ranks = cj.compression.allocate(net, 0.5, "tucker", rank_multiple=8)
  for path, node in compression.compressible(net, "tucker"):
    rank = ranks[path]  # on the kernel's last modes (a conv's channels)
    whole = node.kernel.shape[-len(rank):]
    assert all(r % 8 == 0 or r == n for r, n in zip(rank, whole)), path
  with pytest.raises(ValueError, match="Conv at 'blocks/0/conv' has no 'cp' "
                     "rank that is a multiple of rank_multiple 1000"):
    cj.compression.allocate(Net(nnx.Rngs(0)), 0.5, "cp", rank_multiple=1000)
  for bad in (0, 2.5, True):
    with pytest.raises(ValueError, match="rank_multiple must be an int"):
      cj.compression.allocate(net, 0.5, "svd", rank_multiple=bad)


@pytest.mark.slow
def test_a_budget_of_multiply_adds_counts_them_on_the_inputs():
  net = Net(nnx.Rngs(0))
  x = jnp.ones((2, 9, 9, 3))
  small, report = cj.compress(net, 0.3, "tucker", budget_of="macs",
                              inputs=x)
  assert report.budget_of == "macs" and report.left_alone == ()
  counts = {layer.path: (layer.macs_before, layer.macs_after)
            for layer in report.layers}
  assert counts["stem"][0] == 2 * 9 * 9 * (3 * 3 * 3) * 8  # SAME, stride 1
  assert counts["blocks/1"][0] == 2 * 5 * 5 * (3 * 3 * 12) * 16  # stride 2
  assert counts["head"][0] == 2 * 16 * 10
  flops = small.stem.flops(x.shape)
  assert counts["stem"][1] == min(flops["factorized"], flops["reconstructed"])
  assert sum(after for _, after in counts.values()) <= 0.3 * sum(
      before for before, _ in counts.values())
  assert "multiply-adds before" in report.table()
  # A weight of the strided conv costs a third of the others' multiply-adds:
  # a budget of them gives it more rank than a budget of weights does.
  by_weights = cj.compression.allocate(net, 0.3, "tucker")
  by_macs = report.ranks()
  assert by_macs["blocks/1"][1] > by_weights["blocks/1"][1]
  # Ranks given are held to a budget of multiply-adds too, each counted as
  # the layer it builds (an int rank of a Tucker conv, a fraction).
  with pytest.raises(ValueError, match="the ranks given keep .* "
                     "multiply-adds, more than budget 0.3"):
    cj.compress(net, 0.3, "tucker", budget_of="macs", inputs=x,
                ranks={p: 1.0 for p in counts})
  _, given = cj.compress(net, None, "tucker", inputs=x,
                         ranks={p: 2 for p in counts})
  assert given.layers[0].macs_after < given.layers[0].macs_before
  # An embedding's lookup costs none, so every rank of it costs more: it
  # takes its ranks on their merits, and alone it can't be budgeted.
  attention = _planted_attention()
  ids = jax.random.randint(jax.random.key(0), (2, 7), 0, 50)
  _, report = cj.compress(attention, 0.5, "svd", budget_of="macs",
                          inputs=ids)
  embed = next(r for r in report.layers if r.path == "embed")
  assert embed.macs_before == 0 and embed.rank >= 4  # its planted rank
  with pytest.raises(ValueError, match="do no multiply-adds"):
    cj.compress(attention, 0.5, "svd", include=("embed",),
                budget_of="macs", inputs=ids)
  with pytest.raises(ValueError, match="budget_of 'macs' counts "
                     "multiply-adds on the layers' inputs; give inputs="):
    cj.compress(net, 0.3, "tucker", budget_of="macs")
  with pytest.raises(ValueError, match="budget_of must be one of"):
    cj.compress(net, 0.3, "tucker", budget_of="flops", inputs=x)


def test_tt_tensorizes_both_sides_into_as_many_balanced_modes():
  tt_shapes = compression.tt_shapes
  assert tt_shapes(784, 625) == ((7, 7, 4, 4), (5, 5, 5, 5))
  assert tt_shapes(32, 64) == ((4, 2, 2, 2), (4, 4, 2, 2))
  assert tt_shapes(784, 10) == ((28, 28), (5, 2))
  assert tt_shapes(13, 64) == ((13,), (64,))  # a prime: one mode, dense


@pytest.mark.slow
def test_a_compressed_model_saves_and_loads_without_decomposing(tmp_path):
  net = _planted_attention()
  ids = jax.random.randint(jax.random.key(0), (2, 7), 0, 50)
  small, report = cj.compress(net, 0.6, MIXED)
  cj.compression.save(tmp_path / "small", small, report)
  other = nnx.eval_shape(lambda: Attention(nnx.Rngs(3)))  # shapes alone
  back = cj.compression.load(tmp_path / "small", other)
  assert isinstance(back.attn.key, cj.layers.TuckerDense)
  assert isinstance(back.mlp[1], cj.layers.TTDense)
  np.testing.assert_array_equal(back(ids), small(ids))
  with pytest.raises(FileExistsError, match="holds a saved model already"):
    cj.compression.save(tmp_path / "small", small, report)
  with pytest.raises(FileNotFoundError, match="no compression.json"):
    cj.compression.load(tmp_path / "elsewhere", other)

def test_compress_refuses_what_it_cant_compute_by_name():
  net = Attention(nnx.Rngs(0))
  net.mix = nnx.Einsum("btd,tdh->bth", (7, 32, 16), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="Einsum at 'mix' can't take "
                     "factorization 'svd'.*'btd,tdh->bth' does not"):
    cj.compress(net, 0.5, "svd", include=("mix",))
  with pytest.raises(ValueError, match="Conv at 'conv' can't take "
                     "factorization 'svd'"):
    cj.compress(net, 0.5, "svd", include=(nnx.Conv,))
  with pytest.raises(ValueError, match="LinearGeneral at 'attn/out' can't "
                     "take factorization 'tt'.*one input and one output"):
    cj.compress(net, 0.5, "tt", include=("attn/out",))
  with pytest.raises(ValueError, match="Linear at 'head' is included, but no "
                     "filter of factorization"):
    cj.compress(net, 0.5, {nnx.Conv: "cp"}, include=("head", "conv"))
  with pytest.raises(ValueError, match=r"factorization\['mlp/\*'\] must be "
                     "one of"):
    cj.compress(net, 0.5, {nnx.Conv: "cp", "mlp/*": "svdd"})
  with pytest.raises(ValueError, match="factorization filter 'nope' matches "
                     "no layer"):
    cj.compress(net, 0.5, {"nope": "cp"})
  net.head = nnx.LinearGeneral(16, 10, axis=0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"LinearGeneral at 'head'.*contracts "
                     r"axis \(0,\)"):
    cj.compress(net, 0.5, "svd")

def _cnn(data_dir, **overrides):
  # Looped, 4 steps a call: 16 steps an epoch compile once per model (the
  # config's 12 unrolled steps would compile 12 copies of the step, twice).
  config = tiny(load_config("compress_fashion_mnist", "quick"), data_dir,
                **{"dataset.name": "mnist", "num_train_examples": 0,
                   "num_test_examples": 0, "batch_size": 32,
                   "steps_per_call": 4, "unroll": False,
                   "model.kwargs": {"widths": (8, "M", 16, 16)},
                   **overrides})
  return config


def test_compress_and_fine_tune_in_a_sweep(mnist_dir, tmp_path):
  config = _cnn(mnist_dir)
  config.sweep = (
      {"seed": [0]},
      {"compress.factorization": ["tucker"], "compress.budget": [0.3],
       "compress.allocation": ["global", "uniform"], "num_epochs": [1],
       "teacher": ["num_epochs=3"], "seed": [0]},
      {"compress.factorization": ["tucker"], "compress.budget": [0.3],
       "compress.allocation": ["uniform"], "num_epochs": [1],
       "compress.calibration_examples": [100],
       "teacher": ["num_epochs=3"], "seed": [0]},
      {"compress.factorization": ["cp"], "compress.budget": [0.3],
       "compress.init": ["random"], "teacher": [""], "seed": [0]},
  )
  rows = sweep.run_sweep(config, tmp_path / "sweep")
  assert [r["status"] for r in rows] == ["ok"] * 5
  dense, tuned, uniform, calibrated, scratch = rows
  assert (tuned["factorization"], tuned["rank"], tuned["init"]) == (
      "tucker", '"global 0.3"', "compressed")
  assert scratch["init"] == "scratch" and scratch["factorization"] == "cp"
  assert float(tuned["layer_compression"]) >= 1 / 0.3 - 1e-6
  runs = sorted((tmp_path / "sweep" / "runs").iterdir(), key=lambda p: next(
      i for i, r in enumerate(rows) if p.name.endswith(r["key"])))
  report = json.loads((runs[1] / "compression.json").read_text())
  assert [layer["path"] for layer in report["layers"]] == ["convs/1",
                                                           "convs/2"]
  assert report["layers"][0]["output_error"] is None
  # Calibrated on the first 100 training images: the output errors are in,
  # at the uniform run's ranks.
  plain = json.loads((runs[2] / "compression.json").read_text())
  report = json.loads((runs[3] / "compression.json").read_text())
  assert [layer["rank"] for layer in report["layers"]] == [
      layer["rank"] for layer in plain["layers"]]
  assert all(0 < layer["output_error"] < 1 for layer in report["layers"])
  # A run restores into its compressed architecture, with its accuracy.
  model, restored = train.restore(runs[1])
  assert isinstance(model.convs[1], cj.layers.TuckerConv)
  assert cj.count_params(model) == int(tuned["params"])
  scratch_model, _ = train.restore(runs[4])
  assert isinstance(scratch_model.convs[2], cj.layers.CPConv)
  # The fine-tuning's teacher is the dense run, found by its key.
  assert run_key(teacher_config(restored)) == dense["key"]
  # Rerun: every run is found done, nothing retrained.
  again = sweep.run_sweep(config, tmp_path / "sweep")
  assert [r["key"] for r in again] == [r["key"] for r in rows]


def test_compress_config_errors(mnist_dir):
  config = _cnn(mnist_dir, **{"compress.factorization": "tucker"})
  validate(config)
  for field, value, message in (
      ("compress.factorization", "tr", "unknown compress.factorization"),
      ("compress.allocation", "even", "unknown compress.allocation"),
      ("compress.budget", 1.5, "budget must be a float"),
      ("compress.calibration_examples", -1,
       "calibration_examples must be an int >= 0"),
      ("teacher", "model.name=ttl_mlp", "changes the model block")):
    bad = config.copy_and_resolve_references()
    with bad.ignore_type():
      bad_field = bad
      *parents, leaf = field.split(".")
      for parent in parents:
        bad_field = bad_field[parent]
      bad_field[leaf] = value
    with pytest.raises(ValueError, match=message):
      validate(bad)
  # More calibration images than training images: refused before any run.
  few = config.copy_and_resolve_references()
  few.num_train_examples = 512
  few.compress.calibration_examples = 1024
  with pytest.raises(ValueError, match="calibration_examples 1024 is more "
                     "than num_train_examples 512"):
    validate(few)
  # A whole number over 1 in the float field is a count of weights.
  counted = config.copy_and_resolve_references()
  counted.compress.budget = 14960
  validate(counted)
  assert counted.compress.budget == 14960.0
  assert extensions.compress_kwargs(counted, None)["budget"] == 14960
  assert type(extensions.compress_kwargs(counted, None)["budget"]) is int
  # Off, the block is left out of the run key.
  off = config.copy_and_resolve_references()
  off.compress.factorization = ""
  off.compress.budget = 0.5
  plain = off.copy_and_resolve_references()
  del plain["compress"]
  assert run_key(off) == run_key(plain)


@pytest.mark.slow
def test_vgg16_config_compresses_its_trained_dense_net():
  config = load_config("ttl_vgg16_cifar10")
  runs = [run for _, run in expand(config) if run.compress.factorization]
  assert {run.compress.allocation for run in runs} == {"global", "uniform"}
  for run in runs:
    validate(run)
    teacher = teacher_config(run)
    assert teacher.model.factorization == "dense"
    assert teacher.num_epochs == config.num_epochs
  dense = build_model(teacher)
  ranks = compression.allocate(dense, 0.1, "tucker",
                               exclude=("convs/0", "out"))
  assert list(ranks)[-2:] == ["hidden/0", "hidden/1"]
  small = nnx.eval_shape(lambda: cj.compress(
      dense, 0.1, "tucker", exclude=("convs/0", "out"), ranks=ranks,
      init="random")[0])
  ours, before = models.count_factorized(small)
  assert 0.09 * before < ours <= 0.1 * before


def test_unrolled_steps_train_as_the_loop_does(mnist_dir, tmp_path):
  """config.unroll changes how the steps compile, not what they compute."""
  config = _cnn(mnist_dir, num_epochs=1, steps_per_call=4)
  rows = [train.train_and_evaluate(
      _cnn(mnist_dir, num_epochs=1, steps_per_call=4, unroll=unroll),
      tmp_path / str(unroll)) for unroll in (False, True)]
  assert run_key(config) == run_key(_cnn(mnist_dir, num_epochs=1,
                                         steps_per_call=4, unroll=True))
  # float32 sums fused in another order drift apart a little over the
  # steps: 2e-4 relative in the loss on one of our CPUs.
  np.testing.assert_allclose(rows[0]["test_loss"], rows[1]["test_loss"],
                             rtol=1e-3)
  assert abs(rows[0]["test_accuracy"] - rows[1]["test_accuracy"]) <= 0.01


@pytest.mark.slow
@pytest.mark.parametrize("factorization", ["cp", "tucker"])
def test_compress_decomposes_what_a_masked_conv_computes(factorization):
  mask = jnp.zeros((3, 3, 4, 6)).at[1, :, :, :].set(1.0)  # middle row only
  conv = nnx.Conv(4, 6, (3, 3), mask=mask, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 4))
  ranks = {"": 18 if factorization == "cp" else (4, 6)}
  small, report = cj.compress(conv, None, factorization, ranks=ranks)
  masked = conv.kernel[...] * mask
  rebuilt = small.kernel_tensor()
  # The report's error is that of the kernel the conv computes with, and
  # the new layer computes close to the masked conv.
  np.testing.assert_allclose(
      report.layers[0].error,
      jnp.linalg.norm(rebuilt - masked) / jnp.linalg.norm(masked), rtol=1e-3)
  assert report.layers[0].error < 0.05
  np.testing.assert_allclose(small(x), conv(x), atol=0.05)


class _Tied(nnx.Module):
  """One Linear held under two attributes and in a list (tied weights)."""

  def __init__(self, rngs):
    self.first = nnx.Linear(32, 32, rngs=rngs)
    self.again = self.first
    self.layers = nnx.List([self.first, nnx.Linear(32, 8, rngs=rngs)])

  def __call__(self, x):
    return self.layers[1](self.again(self.first(x)))


@pytest.mark.slow
def test_compress_replaces_a_shared_layer_everywhere_it_is_held():
  model = _Tied(nnx.Rngs(0))
  assert sorted(map(sorted, compression.references(model).values())) == [
      ["again", "first", "layers/0"], ["layers/1"]]
  small, report = cj.compress(model, 0.3, "tucker")
  assert small.first is small.again is small.layers[0]
  assert isinstance(small.first, cj.layers.TuckerDense)
  assert report.params_after < report.params_before
  # The shared layer counts once, as the model holds it once.
  assert cj.count_params(small) < cj.count_params(model)
  shared = report.layers[0]
  assert sorted((shared.path, *shared.shared_with)) == [
      "again", "first", "layers/0"]
  assert f"| {shared.path} (= " in report.table()
  # A filter matches a shared layer at any of its paths.
  _, only = cj.compress(model, 0.3, "tucker", exclude=("again",))
  assert [layer.path for layer in only.layers] == ["layers/1"]


@pytest.mark.slow
def test_compress_takes_numpy_numbers_and_a_single_filter():
  net = Net(nnx.Rngs(0))
  _, by_float = cj.compress(net, np.float32(0.3), "tucker", exclude="head")
  _, plain = cj.compress(net, 0.3, "tucker", exclude=("head",))
  assert by_float.ranks() == plain.ranks()
  assert type(by_float.budget) is float
  assert by_float.budget == pytest.approx(0.3)
  assert "head" not in by_float.ranks()
  _, by_int = cj.compress(net, np.int64(500), "tucker", include=nnx.Conv)
  assert all(isinstance(n, str) for n in by_int.ranks())
  with pytest.raises(ValueError, match="exclude takes globs on paths and "
                     "layer types, got 3"):
    cj.compress(net, 0.3, "tucker", exclude=[3])


class _Held(nnx.Module):
  """Two Linears held in a container of the kind given, the first of them
  twice where the container allows."""

  def __init__(self, kind, rngs):
    a, b = nnx.Linear(16, 16, rngs=rngs), nnx.Linear(16, 8, rngs=rngs)
    self.keys = {"nnx.Dict": ("0", "1"), "data dict": ("a", "b")}.get(
        kind, (0, 1))
    held = dict(zip(self.keys, (a, b)))
    self.layers = {"nnx.Dict": lambda: nnx.Dict(held),
                   "data dict": lambda: nnx.data(held),
                   "data tuple": lambda: nnx.data((a, b, a)),
                   "nnx.List": lambda: nnx.List([a, b])}[kind]()

  def __call__(self, x):
    first, second = (self.layers[k] for k in self.keys)
    return second(first(x))


@pytest.mark.slow
@pytest.mark.parametrize("kind",
                         ["nnx.Dict", "data dict", "data tuple", "nnx.List"])
def test_compress_replaces_layers_in_any_container(kind):
  """An nnx.Dict with int-like keys, a dict or a tuple wrapped in
  nnx.data, an nnx.List: each layer replaced where it sits (a tuple is
  rebuilt), a repeated one by one new layer."""
  model = _Held(kind, nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (4, 16))
  full = dict(zip((f"layers/{k}" for k in model.keys), ((16, 16), (16, 8))))
  small, report = cj.compress(model, ranks=full)  # full ranks: exact
  assert [layer.path for layer in report.layers] == [
      f"layers/{k}" for k in model.keys]
  assert not [n for _, n in nnx.iter_graph(small)
              if isinstance(n, nnx.Linear)]
  if kind == "data tuple":
    assert small.layers[0] is small.layers[2]
    assert report.layers[0].shared_with == ("layers/2",)
  np.testing.assert_allclose(small(x), model(x), atol=1e-4)
  assert isinstance(model.layers[model.keys[0]], nnx.Linear)  # left alone


@pytest.mark.slow
def test_compress_takes_every_rank_spec_for_a_linear():
  """A Linear's rank as TuckerDense takes it: an int for both modes, a
  tuple, a fraction or 'same' ('same' was split into its letters)."""
  model = _Held("nnx.List", nnx.Rngs(0))
  for spec, want in ((4, (4, 4)), ((3, 5), (3, 5)), ("same", None),
                     (0.5, None)):
    _, report = cj.compress(model, ranks={"layers/0": spec, "layers/1": 2})
    rank = report.layers[0].rank
    assert rank == spec
    layer = cj.layers.TuckerDense.from_linear(
        model.layers[0], in_shape=(16,), out_shape=(16,), rank=want or spec)
    assert report.layers[0].params_after == cj.count_params(layer) - 16
