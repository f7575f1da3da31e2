"""Rank specs and parameter counts (cpac_jax.tensor.rank)."""

import pytest
from flax import nnx

import cpac_jax as cj
from cpac_jax import tensor


@pytest.mark.slow
@pytest.mark.parametrize("rank", [1, 5, 12])
@pytest.mark.parametrize("cin,cout", [(1, 8), (8, 8), (64, 128)])
def test_cpconv_params_follow_cpac_formula(rank, cin, cout):
  conv = cj.layers.CPConv(cin, cout, kernel_size=(3, 3), rank=rank,
                          use_bias=False, rngs=nnx.Rngs(0))
  assert cj.count_params(conv) == rank * (cout + 3 + 3 + cin)
  assert tensor.cp_num_params((3, 3, cin, cout), rank) == rank * (
      cout + 3 + 3 + cin)


@pytest.mark.slow
def test_ttl_mnist_layer_is_6663x_smaller():
  ttl = cj.layers.TuckerDense(in_shape=(28, 28), out_shape=(300,),
                              rank=(5, 5, 10), use_bias=False,
                              rngs=nnx.Rngs(0))
  dense = nnx.Linear(784, 300, use_bias=False, rngs=nnx.Rngs(0))
  assert cj.count_params(ttl) == 3530
  assert cj.count_params(dense) == 235_200
  assert round(cj.count_params(dense) / cj.count_params(ttl), 2) == 66.63


@pytest.mark.slow
def test_tucker_conv_params_count_core_and_channel_factors():
  conv = cj.layers.TuckerConv(64, 32, kernel_size=(3, 3), rank=(16, 8),
                              use_bias=False, rngs=nnx.Rngs(0))
  assert cj.count_params(conv) == 3 * 3 * 16 * 8 + 64 * 16 + 32 * 8
  assert cj.count_params(conv) == tensor.tucker_num_params(
      (3, 3, 64, 32), (16, 8), modes=(2, 3))


@pytest.mark.parametrize("fraction", [0.1, 0.5, 1.0])
def test_cp_fraction_keeps_at_most_that_share(fraction):
  shape = (3, 3, 64, 64)
  rank = tensor.cp_rank(shape, fraction)
  dense = 3 * 3 * 64 * 64
  assert tensor.cp_num_params(shape, rank) <= fraction * dense
  assert tensor.cp_num_params(shape, rank + 1) > fraction * dense


@pytest.mark.parametrize("fraction", [0.015, 0.1, 0.5])
def test_tucker_fraction_keeps_at_most_that_share(fraction):
  shape = (28, 28, 300)
  ranks = tensor.tucker_rank(shape, fraction)
  params = tensor.tucker_num_params(shape, ranks)
  assert params <= fraction * 235_200
  assert params >= 0.5 * fraction * 235_200  # and doesn't waste the budget


def test_same_means_the_dense_parameter_count():
  assert tensor.cp_rank((3, 3, 8, 8), "same") == (3 * 3 * 8 * 8) // 22
  ranks = tensor.tucker_rank((3, 3, 8, 8), "same", modes=(2, 3))
  assert tensor.tucker_num_params((3, 3, 8, 8), ranks, (2, 3)) <= 576


def test_int_tucker_rank_applies_to_every_mode():
  assert tensor.tucker_rank((28, 28, 300), 5) == (5, 5, 5)


@pytest.mark.parametrize("rank,match", [
    (0, "int >= 1"), (-3, "int >= 1"), (2.5, r"\(0, 1\]"), (0.0, r"\(0, 1\]"),
    ("full", "'same'"), (True, "int >= 1"), ((2, 2), "int >= 1"),
    (1e-4, "at least 0.03")])
def test_cp_rank_rejects_bad_spec_naming_layer_and_range(rank, match):
  with pytest.raises(ValueError, match="conv1") as error:
    tensor.cp_rank((3, 3, 8, 8), rank, layer="conv1")
  assert error.match(match)


@pytest.mark.parametrize("rank,match", [
    ((5, 5), "2 entries"), ((5, 5, 400), r"1\.\.300"), (29, r"1\.\.28"),
    (0, "out of range"), (1.5, r"\(0, 1\]"), ("half", "'same'"),
    ((5, 5.0, 10), "a tuple of ints"), (1e-5, "at least")])
def test_tucker_rank_rejects_bad_spec_naming_layer_and_range(rank, match):
  with pytest.raises(ValueError, match="fc1") as error:
    tensor.tucker_rank((28, 28, 300), rank, layer="fc1")
  assert error.match(match)


def test_tt_int_rank_is_capped_by_what_each_bond_can_need():
  assert tensor.tt_max_ranks((3, 3, 3, 64)) == (1, 3, 9, 27, 1)
  assert tensor.tt_rank((3, 3, 3, 64), 16) == (1, 3, 9, 16, 1)
  assert tensor.tt_rank((3, 3, 3, 64), (2, 5, 7)) == (1, 2, 5, 7, 1)
  assert tensor.tt_rank((3, 3, 3, 64), (1, 2, 5, 7, 1)) == (1, 2, 5, 7, 1)


@pytest.mark.slow
@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5, 1.0])
def test_tt_fraction_keeps_at_most_that_share(fraction):
  shape = (64, 3, 3, 64)
  ranks = tensor.tt_rank(shape, fraction)
  assert tensor.tt_num_params(shape, ranks) <= fraction * 36_864
  bigger = (1,) + tuple(min(r + 1, m) for r, m in zip(
      ranks[1:-1], tensor.tt_max_ranks(shape)[1:-1])) + (1,)
  assert tensor.tt_num_params(shape, bigger) > fraction * 36_864
  conv = cj.layers.TTConv(64, 64, (3, 3), rank=fraction, use_bias=False,
                          rngs=nnx.Rngs(0))
  assert cj.count_params(conv) == tensor.tt_num_params(shape, ranks)


@pytest.mark.parametrize("rank,match", [
    (0, "int >= 1"), ((2, 2), "2 entries"), ((4, 2, 2), r"1\.\.3, 1\.\.9"),
    ((2, 2, 2, 2, 2), "start and end with 1"), ((2, 2, 30), r"1\.\.27"),
    (1.5, r"\(0, 1\]"),
    ("full", "'same'"), ((2, 2.0, 2), "tuple of inner ranks"),
    (1e-4, "at least")])
def test_tt_rank_rejects_bad_spec_naming_layer_and_range(rank, match):
  with pytest.raises(ValueError, match="conv2") as error:
    tensor.tt_rank((3, 3, 3, 64), rank, layer="conv2")
  assert error.match(match)


def test_rank_specs_take_numpy_scalars():
  import numpy as np  # pylint: disable=g-import-not-at-top

  from cpac_jax import tensor  # pylint: disable=g-import-not-at-top
  assert tensor.cp_rank((3, 3, 8, 16), np.int64(5)) == 5
  assert tensor.cp_rank((3, 3, 8, 16), np.float32(0.5)) == tensor.cp_rank(
      (3, 3, 8, 16), 0.5)
  assert tensor.tucker_rank((28, 28, 300), (np.int64(5), 5, np.int32(10))
                            ) == (5, 5, 10)


def test_cp_rank_is_bounded_by_the_entries_of_the_tensor():
  from cpac_jax import tensor  # pylint: disable=g-import-not-at-top
  assert tensor.cp_rank((3, 3, 1, 8), 12) == 12  # the paper's over-complete
  assert tensor.cp_rank((3, 3, 1, 8), 72) == 72
  with pytest.raises(ValueError, match=r"CP rank 73 exceeds the 72 entries "
                     r"of a \(3, 3, 1, 8\) tensor; give at most 72"):
    tensor.cp_rank((3, 3, 1, 8), 73)
