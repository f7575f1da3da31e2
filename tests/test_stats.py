"""The statistics every table uses (`cpac_jax.stats`)."""

import math

import numpy as np
import pytest
from scipy import stats

from cpac_jax import stats as cj_stats


def test_predictive_t_is_the_t_of_one_more_draw():
  values = [0.970, 0.972, 0.975, 0.971, 0.973]
  t, p = cj_stats.predictive_t(values, 0.980)
  mean, std = np.mean(values), np.std(values, ddof=1)
  assert t == pytest.approx((0.980 - mean) / (std * math.sqrt(1 + 1 / 5)))
  assert p == pytest.approx(2 * stats.t.sf(t, 4))
  assert cj_stats.predictive_t([0.97], 0.98) is None
  assert cj_stats.predictive_t([0.97, 0.97], 0.98) is None


def test_joint_predictive_shrinks_as_the_settings_correlate():
  pairs = [([0.0, 1.0, 2.0, 1.5, 0.5], 3.0)] * 4
  alone, _, k = cj_stats.joint_predictive(pairs)
  assert k == 4
  one, _, _ = cj_stats.joint_predictive(pairs[:1])
  assert alone == pytest.approx(2 * one)  # 4 equal z's over sqrt(4)
  # Fully correlated settings carry one setting's evidence.
  assert cj_stats.joint_predictive(pairs, rho=1.0)[0] == pytest.approx(one)


@pytest.mark.parametrize("shift,expected", [(1.0, 1.0), (-1.0, -1.0)])
def test_seed_correlation_of_settings_moving_together(shift, expected):
  seeds = {0: 0.1, 1: 0.5, 2: 0.2, 3: 0.9}
  moved = {s: shift * v for s, v in seeds.items()}
  assert cj_stats.seed_correlation([seeds, moved]) == pytest.approx(expected)
  assert cj_stats.seed_correlation([seeds]) is None


def test_the_chance_that_the_best_of_k_reaches_a_value_rises_with_k():
  values = [0.1, 0.4, 0.2, 0.3]
  chances = [cj_stats.chance_best_of(values, 0.45, k) for k in (1, 5, 10)]
  assert 0 < chances[0] < chances[1] < chances[2] < 1
  assert cj_stats.chance_best_of([0.1], 0.45, 5) is None


def test_percentile_counts_ties_half_and_interval_widens_with_fewer_seeds():
  assert cj_stats.percentile([0.1, 0.2, 0.3, 0.4], 0.3) == 62.5
  assert cj_stats.percentile([0.1, 0.2], 0.05) == 0.0
  assert cj_stats.interval95([0.5]) is None
  values = [0.97, 0.98, 0.975, 0.985, 0.972]
  low, high = cj_stats.interval95(values)
  assert low < sum(values) / 5 < high
  narrow = cj_stats.interval95(values * 2)
  assert narrow[1] - narrow[0] < high - low


def test_paired_gaps_take_the_shared_seeds_in_order_as_points():
  ours = {2: 0.95, 0: 0.90, 1: 0.93}
  theirs = {0: 0.89, 2: 0.96, 7: 0.5}
  assert cj_stats.paired_gaps(ours, theirs) == pytest.approx([1.0, -1.0])
  assert cj_stats.paired_gaps(ours, {}) == []


def test_the_cells_tables_write():
  assert cj_stats.mean_std_text([0.97, 0.98, 0.99]) == "0.9800 ± 0.0100 (n=3)"
  assert cj_stats.mean_std_text([0.5]) == "0.5000 ± 0.0000 (n=1)"
  assert cj_stats.mean_std_text([]) == "-"
  low, high = cj_stats.interval95([1.0, 2.0, 3.0])
  assert cj_stats.gap_text([1.0, 2.0, 3.0]) == (
      f"+2.00 [{low:+.2f}, {high:+.2f}]")
  assert cj_stats.gap_text([-0.5]) == "-0.50"
  assert cj_stats.gap_text([]) == "-"
