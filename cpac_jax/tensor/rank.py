"""Rank specs, resolved in one place, and the parameter counts they imply.

A rank spec means what it means in TensorLy-Torch:
  - an int: the CP rank, or the same Tucker rank on every factorized mode;
  - a tuple of ints: one Tucker rank per factorized mode, or the ranks of a
    tensor train (the d - 1 inner ones, or all d + 1 with the boundary 1s);
  - a float in (0, 1]: keep that fraction of the dense parameter count
    (0.1 is about 10x compression), rounded down to a rank that fits;
  - "same": as many parameters as the dense tensor (the fraction 1.0).
Anything that can't be honoured raises ValueError naming the layer, the spec
and the valid range; nothing is clipped silently.
"""

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "RankSpec",
    "cp_num_params",
    "cp_rank",
    "tt_max_ranks",
    "tt_num_params",
    "tt_rank",
    "tucker_num_params",
    "tucker_rank",
]

RankSpec = int | float | str | Sequence[int]


def cp_num_params(shape: Sequence[int], rank: int) -> int:
  """Entries of the factor matrices of a rank-R CP tensor: R * sum(shape).

  For a conv kernel this is the CPAC-Conv count R * (kh + kw + Cin + Cout).
  """
  return rank * sum(shape)


def tucker_num_params(shape: Sequence[int], ranks: Sequence[int],
                      modes: Sequence[int] | None = None) -> int:
  """Entries of the core and factors of a (partial) Tucker tensor."""
  modes = tuple(range(len(shape))) if modes is None else tuple(modes)
  core = list(shape)
  factors = 0
  for r, m in zip(ranks, modes, strict=True):
    core[m] = r
    factors += shape[m] * r
  return math.prod(core) + factors


def _plain(spec):
  """A rank spec with NumPy scalars (`np.int64(5)`, `np.float32(0.5)`, in
  a tuple too) made the Python numbers they hold."""
  if isinstance(spec, np.generic):
    return spec.item()
  if isinstance(spec, (list, tuple)):
    return type(spec)(_plain(s) for s in spec)
  return spec


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _fraction(spec, layer: str, kind: str) -> float | None:
  """The fraction a float or "same" spec asks for, else None."""
  if isinstance(spec, str):
    if spec != "same":
      raise ValueError(
          f"{layer}: {kind} rank {spec!r} is not a valid spec; the only "
          "string accepted is 'same'")
    return 1.0
  if isinstance(spec, float):
    if not 0 < spec <= 1:
      raise ValueError(
          f"{layer}: {kind} rank fraction {spec!r} is out of range; a float "
          "rank must lie in (0, 1]")
    return spec
  return None


def cp_rank(shape: Sequence[int], rank: RankSpec, *,
            layer: str = "layer") -> int:
  """Resolve a CP rank spec for a tensor of `shape` to an int R >= 1."""
  rank = _plain(rank)
  shape = tuple(shape)
  dense = math.prod(shape)
  fraction = _fraction(rank, layer, "CP")
  if fraction is not None:
    resolved = math.floor(fraction * dense / sum(shape))
    if resolved < 1:
      raise ValueError(
          f"{layer}: CP rank {rank!r} keeps less than one rank-1 term of a "
          f"{shape} tensor ({sum(shape)} parameters each, {dense} dense); "
          f"a fraction must be at least {sum(shape) / dense:.4g}")
    return resolved
  if not _is_int(rank) or rank < 1:
    raise ValueError(
        f"{layer}: CP rank {rank!r} is invalid; give an int >= 1, a float in "
        "(0, 1] or 'same'")
  if rank > dense:
    # A tensor's CP rank never exceeds its number of entries: more rank-1
    # terms than that can only repeat what fewer hold (over-complete ranks
    # up to it stay allowed: the CPAC-Conv paper trains rank 12 on a
    # 72-entry kernel).
    raise ValueError(
        f"{layer}: CP rank {rank} exceeds the {dense} entries of a {shape} "
        f"tensor; give at most {dense}")
  return rank


def tucker_rank(shape: Sequence[int], rank: RankSpec,
                modes: Sequence[int] | None = None, *,
                layer: str = "layer") -> tuple[int, ...]:
  """Resolve a Tucker rank spec to one rank per factorized mode.

  A fraction picks ranks proportional to the mode sizes, r_n = round(s * I_n)
  (at least 1), with the largest scale s whose parameter count fits the
  budget.
  """
  rank = _plain(rank)
  shape = tuple(shape)
  modes = tuple(range(len(shape))) if modes is None else tuple(modes)
  sizes = [shape[m] for m in modes]
  valid = "(" + ", ".join(f"1..{s}" for s in sizes) + ")"
  fraction = _fraction(rank, layer, "Tucker")
  if fraction is not None:
    budget = fraction * math.prod(shape)

    def ranks_at(scale: float) -> tuple[int, ...]:
      return tuple(max(1, min(s, round(scale * s))) for s in sizes)

    if tucker_num_params(shape, ranks_at(0.0), modes) > budget:
      smallest = tucker_num_params(shape, ranks_at(0.0), modes)
      raise ValueError(
          f"{layer}: Tucker rank {rank!r} leaves {budget:.0f} parameters, "
          f"fewer than the {smallest} of ranks all 1 on modes {modes} of "
          f"shape {shape}; a fraction must be at least "
          f"{smallest / math.prod(shape):.4g}")
    low, high = 0.0, 1.0
    for _ in range(50):
      mid = (low + high) / 2
      if tucker_num_params(shape, ranks_at(mid), modes) <= budget:
        low = mid
      else:
        high = mid
    return ranks_at(low)
  if _is_int(rank):
    ranks = (rank,) * len(modes)
  elif isinstance(rank, Sequence) and all(_is_int(r) for r in rank):
    ranks = tuple(rank)
    if len(ranks) != len(modes):
      raise ValueError(
          f"{layer}: Tucker rank {rank!r} has {len(ranks)} entries but the "
          f"layer factorizes {len(modes)} modes of shape {shape}; give one "
          f"rank per mode in {valid}")
  else:
    raise ValueError(
        f"{layer}: Tucker rank {rank!r} is invalid; give an int, a tuple of "
        f"ints in {valid}, a float in (0, 1] or 'same'")
  if not all(1 <= r <= s for r, s in zip(ranks, sizes)):
    raise ValueError(
        f"{layer}: Tucker rank {rank!r} is out of range for modes of sizes "
        f"{tuple(sizes)}; each rank must lie in {valid}")
  return ranks


def tt_num_params(shape: Sequence[int], ranks: Sequence[int]) -> int:
  """Entries of the cores (r_k, I_k, r_{k+1}) of a tensor train with
  `ranks` (r_0 = r_d = 1 included): sum_k r_k I_k r_{k+1}."""
  return sum(ranks[k] * size * ranks[k + 1] for k, size in enumerate(shape))


def tt_max_ranks(shape: Sequence[int]) -> tuple[int, ...]:
  """The largest TT ranks a tensor of `shape` can need, boundaries included:
  r_k = min(prod(shape[:k]), prod(shape[k:])), the ranks at which the tensor
  train holds any tensor exactly."""
  shape = tuple(shape)
  return tuple(min(math.prod(shape[:k]), math.prod(shape[k:]))
               for k in range(len(shape) + 1))


def tt_rank(shape: Sequence[int], rank: RankSpec, *,
            layer: str = "layer") -> tuple[int, ...]:
  """Resolve a TT rank spec for a tensor train over the modes `shape` to
  its d + 1 ranks (1, r_1, ..., r_{d-1}, 1).

  An int r gives every bond min(r, the largest it can need)
  (`tt_max_ranks`), as TensorLy does; a tuple gives the inner ranks (d - 1
  of them, or d + 1 with the boundary 1s), each within that largest; a
  fraction (or "same") takes the largest such uniform r whose cores fit the
  budget.
  """
  rank = _plain(rank)
  shape = tuple(shape)
  maxima = tt_max_ranks(shape)
  inner = maxima[1:-1]
  valid = "(" + ", ".join(f"1..{m}" for m in inner) + ")"

  def uniform(r: int) -> tuple[int, ...]:
    return (1,) + tuple(min(r, m) for m in inner) + (1,)

  fraction = _fraction(rank, layer, "TT")
  if fraction is not None:
    budget = fraction * math.prod(shape)
    smallest = tt_num_params(shape, uniform(1))
    if smallest > budget:
      raise ValueError(
          f"{layer}: TT rank {rank!r} leaves {budget:.0f} parameters, fewer "
          f"than the {smallest} of ranks all 1 on modes {shape}; a fraction "
          f"must be at least {smallest / math.prod(shape):.4g}")
    low, high = 1, max(inner, default=1)
    while low < high:  # the largest r that fits; the count grows with r
      mid = (low + high + 1) // 2
      if tt_num_params(shape, uniform(mid)) <= budget:
        low = mid
      else:
        high = mid - 1
    return uniform(low)
  if _is_int(rank):
    if rank < 1:
      raise ValueError(
          f"{layer}: TT rank {rank!r} is invalid; give an int >= 1, the "
          f"inner ranks in {valid}, a float in (0, 1] or 'same'")
    return uniform(rank)
  if not (isinstance(rank, Sequence) and all(_is_int(r) for r in rank)):
    raise ValueError(
        f"{layer}: TT rank {rank!r} is invalid; give an int >= 1, a tuple of "
        f"inner ranks in {valid}, a float in (0, 1] or 'same'")
  ranks = tuple(rank)
  if len(ranks) == len(shape) + 1 and len(shape) > 1:
    if ranks[0] != 1 or ranks[-1] != 1:
      raise ValueError(
          f"{layer}: TT rank {rank!r} must start and end with 1 when it "
          "lists the boundary ranks")
    ranks = ranks[1:-1]
  if len(ranks) != len(inner):
    raise ValueError(
        f"{layer}: TT rank {rank!r} has {len(ranks)} entries but a tensor "
        f"train over {len(shape)} modes {shape} has {len(inner)} inner ranks "
        f"(or {len(shape) + 1} with the boundary 1s); give them in {valid}")
  if not all(1 <= r <= m for r, m in zip(ranks, inner)):
    raise ValueError(
        f"{layer}: TT rank {rank!r} is out of range for modes {shape}; each "
        f"inner rank must lie in {valid}")
  return (1,) + ranks + (1,)
