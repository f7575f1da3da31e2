"""The statistics every results table uses: mean and sample standard
deviation (ddof=1), the 95% Student-t interval of a mean, gaps paired by
seed, where a value falls among others, the predictive test of a single
run against a seed distribution and its combination over settings; and
the few ways tables write them."""

import functools
import math
import statistics

__all__ = ["chance_best_of", "gap_text", "interval95", "joint_predictive",
           "mean_std", "mean_std_text", "paired_gaps", "percentile",
           "predictive_t", "seed_correlation"]


@functools.cache
def _scipy():
  """scipy.stats, imported on first use: seconds a process that never
  tests anything (a training run, a worker) doesn't spend."""
  from scipy import stats  # pylint: disable=C0415
  return stats


def mean_std(values: list[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (ddof=1; 0 for one value)."""
  std = statistics.stdev(values) if len(values) > 1 else 0.0
  return statistics.fmean(values), std


def interval95(values: list[float]) -> tuple[float, float] | None:
  """The 95% Student-t interval of the mean of `values`; None for fewer
  than two."""
  if len(values) < 2:
    return None
  mean, std = mean_std(values)
  half = _scipy().t.ppf(0.975, len(values) - 1) * std / math.sqrt(len(values))
  return mean - half, mean + half


def percentile(values: list[float], value: float) -> float:
  """Where `value` falls among `values`, in percent: the share below it,
  ties counted half."""
  below = sum(v < value for v in values) + 0.5 * sum(v == value
                                                     for v in values)
  return 100 * below / len(values)


def predictive_t(values: list[float], value: float
                 ) -> tuple[float, float] | None:
  """How `value` sits as one more draw from the normal population that
  `values` came from: the predictive t, (value - mean) / (std * sqrt(1 +
  1/n)), on n - 1 degrees of freedom, and its two-sided p. None for fewer
  than two values or no spread.

  Example:
    >>> t, p = predictive_t([0.97, 0.98, 0.99], 0.98)
    >>> round(t, 6), round(p, 6)
    (0.0, 1.0)
  """
  if len(values) < 2:
    return None
  mean, std = mean_std(values)
  if std == 0:
    return None
  t = (value - mean) / (std * math.sqrt(1 + 1 / len(values)))
  return t, float(2 * _scipy().t.sf(abs(t), len(values) - 1))


def joint_predictive(pairs: list[tuple[list[float], float]], rho: float = 0.0
                     ) -> tuple[float, float, int] | None:
  """Stouffer's combination of `predictive_t` over settings: each
  setting's t turned into the normal z of the same one-sided tail, summed
  over the k settings and divided by the sum's standard deviation,
  sqrt(k + k (k - 1) rho) for z's of mean pairwise correlation `rho` (0:
  independent settings); returns (z, two-sided p, k). A large z says the
  single values sit above their populations in the same direction across
  settings. None when no setting has a predictive t."""
  zs = []
  for values, value in pairs:
    found = predictive_t(values, value)
    if found is not None:
      zs.append(_scipy().norm.ppf(_scipy().t.cdf(found[0], len(values) - 1)))
  if not zs:
    return None
  k = len(zs)
  z = float(sum(zs) / math.sqrt(k + k * (k - 1) * rho))
  return z, float(2 * _scipy().norm.sf(abs(z))), k


def seed_correlation(by_seed: list[dict[int, float]]) -> float | None:
  """The mean, over pairs of settings, of the correlation across seeds
  between their runs ({seed: value} per setting, the seeds they share):
  how much one seed (its data order, its draws) moves all settings alike.
  None with fewer than two settings or three shared seeds."""
  seeds = sorted(set.intersection(*(set(s) for s in by_seed))) if by_seed \
      else []
  if len(by_seed) < 2 or len(seeds) < 3:
    return None
  rows = [[setting[s] for s in seeds] for setting in by_seed]
  rhos = [_scipy().pearsonr(a, b)[0] for i, a in enumerate(rows)
          for b in rows[i + 1:] if min(statistics.stdev(a),
                                       statistics.stdev(b)) > 0]
  return float(statistics.fmean(rhos)) if rhos else None


def chance_best_of(values: list[float], value: float, k: int) -> float | None:
  """The chance that the best of k more runs reaches `value`, each run a
  draw from the normal population `values` came from: 1 - (1 - q)^k, q
  the one-sided predictive tail P(run >= value) (`predictive_t`). None
  where `predictive_t` is.

  Example:
    >>> round(chance_best_of([0.97, 0.98, 0.99], 0.98, 2), 6)
    0.75
  """
  found = predictive_t(values, value)
  if found is None:
    return None
  q = float(_scipy().t.sf(found[0], len(values) - 1))
  return 1 - (1 - q) ** k


def paired_gaps(ours: dict, theirs: dict, scale: float = 100.0
                ) -> list[float]:
  """`ours[s] - theirs[s]` times `scale` (points, by default) for each
  seed s the two {seed: value} share, in seed order."""
  return [scale * (ours[s] - theirs[s]) for s in sorted(set(ours)
                                                        & set(theirs))]


def mean_std_text(values: list[float], places: int = 4) -> str:
  """'0.9843 ± 0.0010 (n=3)'; '-' for no values."""
  if not values:
    return "-"
  mean, std = mean_std(values)
  return f"{mean:.{places}f} ± {std:.{places}f} (n={len(values)})"


def mean_std_interval_text(values: list[float], places: int = 4) -> str:
  """`mean_std_text` and the 95% interval of the mean (`interval95`):
  '0.9843 ± 0.0010 (n=3) [0.9818, 0.9868]'; the interval left out for one
  value, '-' for none."""
  interval = interval95(values)
  return mean_std_text(values, places) + (
      f" [{interval[0]:.{places}f}, {interval[1]:.{places}f}]" if interval
      else "")


def gap_text(gaps: list[float]) -> str:
  """'+0.30 [+0.12, +0.48]': the mean gap and its 95% interval (the
  interval left out for one gap); '-' for none."""
  if not gaps:
    return "-"
  interval = interval95(gaps)
  text = f"{statistics.fmean(gaps):+.2f}"
  return text + (f" [{interval[0]:+.2f}, {interval[1]:+.2f}]" if interval
                 else "")
