"""Whole-model compression: a trained model's `nnx.Conv`, `nnx.Linear` and
`nnx.LinearGeneral` layers (attention's projections) swapped for CP, Tucker
or low-rank layers decomposed from their weights, the ranks shared out among
the layers under one parameter budget.

  small, report = cj.compress(model, budget=0.1, factorization="tucker",
                              exclude=("convs/0", "out"))
  print(report.table())

Then fine-tune `small` as any model (the config and sweep machinery do it
for a run whose `config.compress.factorization` is set: see
`cpac_jax.config`).

What replaces what:
  "cp": each `nnx.Conv` by a `CPConv` of rank R (CP-ALS of its kernel,
    `CPConv.from_conv`); a CP dense layer doesn't exist, so `nnx.Linear`
    can't take "cp".
  "tucker": each `nnx.Conv` by a Tucker-2 `TuckerConv` of ranks
    (R_in, R_out) on its channel modes (HOOI, Kim et al. 2016); each
    `nnx.Linear` by a `TuckerDense` of ranks (R, R) on its (in, out)
    matrix (the truncated SVD with an R x R core); each
    `nnx.LinearGeneral` by a `TuckerDense` of its feature shapes, a rank
    per mode (e.g. (embed,) -> (heads, head_dim): three ranks).
  "svd": each `nnx.Linear` and `nnx.LinearGeneral` by a `LowRankDense`,
    its kernel matrix as two thin matrices of rank R (the truncated SVD),
    and each `nnx.Embed` by a `LowRankEmbed`, its table likewise.
  A LinearGeneral must contract the input's last axes, with no batch axes
  (`cpac_jax.layers.linear_features`). Layers the factorization doesn't
  take (`nnx.Einsum` by any) are left as they are, and the report names
  them (`CompressionReport.left_alone`).

The rule that shares the budget (`allocation`):
  "uniform": every layer keeps the same fraction `budget` of its own
    weights (the largest rank that fits it).
  "global": the ranks maximise the product over the layers of the
    fraction of each one's weight energy kept, 1 - e^2 for e = ||W -
    W_hat|| / ||W|| (a signal passes through every layer, so what each
    loses compounds; a sum of errors would starve the largest layers to
    rank 1), with the replaced layers' weights together at most the
    budget: greedily, from every layer at its smallest rank, each step
    raises the rank of the layer that buys the most log energy kept per
    parameter, until no raise fits. The errors come from each layer's
    spectra, without a decomposition per candidate: for Tucker, the
    HOSVD truncation at those ranks (exact for the Linear's SVD; for a
    conv, the Tucker-2 projection onto the leading singular vectors of
    its channel unfoldings; for a LinearGeneral, onto those of every
    mode's unfolding); for "svd", the truncated SVD's (exact); for CP,
    the largest of the channel unfoldings' rank-R truncation errors, a
    lower bound on any rank-R CP's error. Layers whose spectra decay fast
    give up parameters to those whose spectra don't, and a large layer pays
    more parameters per rank than a small one. The report gives each
    layer's error after its actual decomposition.
"""

import dataclasses
import fnmatch
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from cpac_jax import layers as cj_layers

__all__ = ["ALLOCATIONS", "FACTORIZATIONS", "INITS", "CompressionReport",
           "LayerReport", "allocate", "check_budget", "compress",
           "compressible", "load", "references", "save", "set_at"]

FACTORIZATIONS = ("cp", "tucker", "svd")
ALLOCATIONS = ("global", "uniform")
# "decomposed": the new layers from the trained weights; "random": the same
# architecture freshly initialised (to train it from scratch).
INITS = ("decomposed", "random")
_TAKES = {"cp": (nnx.Conv,),
          "tucker": (nnx.Conv, nnx.Linear, nnx.LinearGeneral),
          "svd": (nnx.Linear, nnx.LinearGeneral, nnx.Embed)}
# Every layer with a weight `compress` looks at; those of no factorization's
# _TAKES are reported left alone.
_WEIGHTED = (nnx.Conv, nnx.Linear, nnx.LinearGeneral, nnx.Einsum, nnx.Embed)


@dataclasses.dataclass(frozen=True)
class LayerReport:
  """What `compress` did to one layer."""

  path: str                 # where it sits, e.g. "convs/1"
  layer: str                # what it was: "Conv(32->64, 3x3)"
  factorization: str        # "cp", "tucker" or "svd"
  rank: int | tuple         # the rank it got
  params_before: int        # weights (bias excluded: it is kept as it was)
  params_after: int
  error: float | None       # ||W - W_hat|| / ||W||; None if not decomposed
  shared_with: tuple[str, ...] = ()  # its other paths, if it is shared


@dataclasses.dataclass(frozen=True)
class CompressionReport:
  """The layers `compress` replaced, and the budget it shared among them."""

  factorization: str
  allocation: str
  budget: float | int | None  # None: the ranks were given, no budget
  layers: tuple[LayerReport, ...]
  # "path (Einsum)": weight layers kept as they were, neither replaced nor
  # excluded (no factorization takes them, or this one doesn't)
  left_alone: tuple[str, ...] = ()

  @property
  def params_before(self) -> int:
    return sum(layer.params_before for layer in self.layers)

  @property
  def params_after(self) -> int:
    return sum(layer.params_after for layer in self.layers)

  @property
  def compression(self) -> float:
    """The replaced layers' weights before over after."""
    return self.params_before / self.params_after

  def ranks(self) -> dict:
    """{path: rank}: what `compress(..., ranks=)` takes to rebuild the
    same architecture."""
    return {layer.path: layer.rank for layer in self.layers}

  def to_dict(self) -> dict:
    return {"factorization": self.factorization,
            "allocation": self.allocation, "budget": self.budget,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "compression": self.compression,
            "layers": [dataclasses.asdict(layer) for layer in self.layers],
            "left_alone": list(self.left_alone)}

  def table(self) -> str:
    """The per-layer report as a markdown table, with a total row."""
    lines = ["| layer | was | factorization | rank | weights before | "
             "weights after | compression | relative error |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for layer in self.layers:
      rank = ("x".join(map(str, layer.rank)) if isinstance(layer.rank, tuple)
              else str(layer.rank))
      error = "" if layer.error is None else f"{layer.error:.3f}"
      where = layer.path + "".join(f" (= {p})" for p in layer.shared_with)
      lines.append(
          f"| {where} | {layer.layer} | {layer.factorization} | {rank} "
          f"| {layer.params_before} | {layer.params_after} | "
          f"{layer.params_before / layer.params_after:.1f}x | {error} |")
    rule = ("ranks given" if self.budget is None
            else f"{self.allocation} {self.budget}")
    lines.append(f"| total | | {self.factorization} | {rule} | "
                 f"{self.params_before} | "
                 f"{self.params_after} | {self.compression:.1f}x | |")
    if self.left_alone:
      lines.append(f"\nLeft as they were: {', '.join(self.left_alone)}.")
    return "\n".join(lines)


Filter = str | type


def compressible(model: nnx.Module, factorization: str = "tucker", *,
                 include: Sequence[Filter] | None = None,
                 exclude: Sequence[Filter] = ()
                 ) -> list[tuple[str, nnx.Module]]:
  """The (path, layer) pairs `compress` would replace, in graph order.

  A filter is a glob on the path ("convs/*", "out") or a layer type
  (`nnx.Linear`); `include` and `exclude` take one filter or a sequence of
  them. `include` None: every layer that can take the factorization
  (`nnx.Conv` for "cp"; also `nnx.Linear` and `nnx.LinearGeneral` for
  "tucker"; those two and `nnx.Embed` for "svd").

  Raises:
    ValueError: an unknown factorization, a filter that matches no layer
      with a weight, an included layer that can't take the factorization,
      a LinearGeneral or Conv no factorized layer computes, or nothing left
      to replace.
  """
  return _choose(model, factorization, include, exclude)[0]


def _choose(model, factorization, include, exclude):
  """`compressible`'s pairs, and the weight layers left alone ("path
  (Type)": neither chosen nor excluded)."""
  _check_choice(factorization, FACTORIZATIONS, "factorization")
  include = None if include is None else _filters(include, "include")
  exclude = _filters(exclude, "exclude")
  refs = references(model)
  candidates = [(refs[id(node)][0], node) for node, _ in
                _layers(model).values()]
  paths = [path for path, _ in candidates]

  def _matches(f: Filter, path: str, node) -> bool:  # at any of its paths
    return any(_match(f, p, node) for p in refs.get(id(node), [path]))

  for kind, filters in (("include", include or ()), ("exclude", exclude)):
    for f in filters:
      if not any(_matches(f, path, node) for path, node in candidates):
        raise ValueError(
            f"compress: {kind} filter {_name(f)!r} matches no layer with a "
            f"weight; the model's are at {paths}")
  takes = _TAKES[factorization]
  chosen, left_alone = [], []
  for path, node in candidates:
    if any(_matches(f, path, node) for f in exclude):
      continue
    if include is not None and any(_matches(f, path, node) for f in include):
      if not isinstance(node, takes):
        raise ValueError(
            f"compress: the {type(node).__name__} at {path!r} can't take "
            f"factorization {factorization!r} (it replaces "
            f"{' and '.join(t.__name__ for t in takes)}); exclude it or "
            "choose another")
      chosen.append((path, node))
    elif include is None and isinstance(node, takes):
      chosen.append((path, node))
    else:
      left_alone.append(f"{path} ({type(node).__name__})")
  if not chosen:
    raise ValueError(
        f"compress: no layer left to replace with {factorization!r} among "
        f"{paths} (include={include!r}, exclude={exclude!r})")
  for path, node in chosen:
    where = f"compress: the {type(node).__name__} at {path!r}"
    if isinstance(node, nnx.Conv):
      cj_layers.from_conv_kwargs(node, where)
    elif not isinstance(node, nnx.Embed):
      cj_layers.linear_features(node, where)
  return chosen, tuple(left_alone)


def compress(model: nnx.Module, budget: float | int | None = None,
             factorization: str = "tucker", *,
             include: Sequence[Filter] | None = None,
             exclude: Sequence[Filter] = (), allocation: str = "global",
             ranks: Mapping[str, object] | None = None,
             init: str = "decomposed", implementation: str = "auto",
             key: jax.Array | None = None,
             rngs: nnx.Rngs | None = None
             ) -> tuple[nnx.Module, CompressionReport]:
  """A copy of `model` (left untouched) with its Conv, Linear and
  LinearGeneral layers (`compressible`) replaced by CP, Tucker or low-rank
  layers, and the report.

  Args:
    model: any Flax NNX model; the layers may sit anywhere in it
      (attributes, nested modules, lists, tuples and dicts, `nnx.List`,
      `nnx.Dict`, containers wrapped in `nnx.data`).
    budget: the replaced layers' weights to keep: a float in (0, 1], the
      fraction (0.1 ~ 10x fewer), or an int, their count; None: 0.1. With
      `ranks`, None (the ranks decide) or a bound the ranks must keep
      within: ranks that keep more are refused, naming both.
    factorization: "cp", "tucker" or "svd" (see the module docstring).
    include, exclude: filters choosing the layers (`compressible`).
    allocation: "global" or "uniform": how the budget is shared out (see
      the module docstring).
    ranks: {path: rank} to give the layers instead of an allocation (as
      `allocate` and `CompressionReport.ranks` return them); every chosen
      layer's.
    init: "decomposed" (from the trained weights) or "random" (the same
      architecture freshly initialised from `rngs`, for training from
      scratch; no reconstruction error then).
    implementation: the new layers' forward path.
    key: seeds CP-ALS (default: key 0).
    rngs: random streams of init "random" (default: Rngs(0)).

  Raises:
    ValueError: a bad budget, factorization, allocation, init, filter or
      rank; a budget below what the smallest ranks need; given ranks that
      keep more weights than a given budget.
  """
  _check_choice(init, INITS, "init")
  budget = _plain(budget)
  chosen, left_alone = _choose(model, factorization, include, exclude)
  paths = [path for path, _ in chosen]
  given = ranks is not None
  if not given:
    ranks = _allocate(chosen, 0.1 if budget is None else budget,
                      factorization, allocation)
  else:
    _check_choice(allocation, ALLOCATIONS, "allocation")
    if sorted(ranks) != sorted(paths):
      raise ValueError(
          f"compress: ranks are given for {sorted(ranks)}, but the layers "
          f"chosen are {paths}")
    ranks = {path: tuple(rank) if isinstance(rank, list) else rank
             for path, rank in ranks.items()}
    if budget is not None:
      _check_ranks_within(chosen, ranks, budget, factorization,
                          implementation)

  refs = references(model)
  new = nnx.clone(model)
  key = jax.random.key(0) if key is None else key
  rngs = rngs or nnx.Rngs(0)
  reports = []
  for i, (path, node) in enumerate(chosen):
    layer = _replace(node, factorization, ranks[path], init, implementation,
                     jax.random.fold_in(key, i), rngs, path)
    if path:
      for where in refs[id(node)]:  # a shared layer at each of its places
        set_at(new, where, layer)
    else:  # the model is the one layer: its replacement is the new model
      new = layer
    error = None
    if init == "decomposed":
      weight = np.asarray(_weight(node), np.float64)
      rebuilt = np.asarray(_rebuilt(layer), np.float64).reshape(weight.shape)
      error = float(np.linalg.norm(weight - rebuilt) / np.linalg.norm(weight))
    reports.append(LayerReport(
        path=path, layer=_describe(node), factorization=factorization,
        rank=ranks[path], params_before=_dense_params(node),
        params_after=cj_layers.count_params(layer) - _bias_params(layer),
        error=error,
        shared_with=tuple(p for p in refs[id(node)] if p != path)))
  return new, CompressionReport(
      factorization, allocation,
      0.1 if budget is None and not given else budget, tuple(reports),
      left_alone)


# --- Saving and loading ------------------------------------------------------


def save(directory: str | Path, model: nnx.Module,
         report: CompressionReport) -> None:
  """Write a compressed model to `directory`: its architecture (the
  report, `compression.json`: factorization and each layer's rank) and
  its state (orbax, `state/`), for `load` to rebuild without decomposing.

  Raises:
    FileExistsError: `directory` holds a saved model already (nothing is
      written).
  """
  import orbax.checkpoint as ocp  # only here: the layers need no orbax

  directory = Path(directory).absolute()
  if (directory / "compression.json").exists() or (
      directory / "state").exists():
    raise FileExistsError(f"compress.save: {directory} holds a saved model "
                          "already; give an empty or new directory")
  directory.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(directory / "state", _saved_state(model))
  # last: a directory holds compression.json only once its state is whole
  (directory / "compression.json").write_text(
      json.dumps(report.to_dict(), indent=1) + "\n")


def load(directory: str | Path, model: nnx.Module) -> nnx.Module:
  """The compressed model `save` wrote to `directory`, rebuilt from
  `model`, the uncompressed architecture (any weights; abstract, from
  `nnx.eval_shape`, is enough): its layers replaced at the saved ranks,
  then every parameter and statistic read back.

  Raises:
    FileNotFoundError: `directory` holds no saved model.
    ValueError: `model` lacks a layer the saved one replaced.
  """
  import orbax.checkpoint as ocp

  directory = Path(directory).absolute()
  if not (directory / "compression.json").exists():
    raise FileNotFoundError(f"compress.load: {directory} holds no saved "
                            "model (no compression.json)")
  saved = json.loads((directory / "compression.json").read_text())
  ranks = {layer["path"]: layer["rank"] for layer in saved["layers"]}
  small = nnx.eval_shape(lambda: compress(
      model, factorization=saved["factorization"], include=tuple(ranks),
      ranks=ranks, init="random")[0])
  with ocp.StandardCheckpointer() as checkpointer:
    state = checkpointer.restore(directory / "state", _saved_state(small))
  nnx.update(small, state)
  return small


def _saved_state(model: nnx.Module) -> nnx.State:
  """What `save` keeps: every variable but random-stream state."""
  return nnx.state(model, nnx.Not(nnx.RngState))


# --- Choosing ranks ----------------------------------------------------------


def allocate(model: nnx.Module, budget: float | int = 0.1,
             factorization: str = "tucker", *,
             include: Sequence[Filter] | None = None,
             exclude: Sequence[Filter] = (), allocation: str = "global"
             ) -> dict:
  """{path: rank} for the layers `compress` would replace: the budget
  shared out by `allocation` (module docstring), from the layers' spectra
  alone (no decomposition). Raises ValueError as `compress` does."""
  chosen = compressible(model, factorization, include=include,
                        exclude=exclude)
  return _allocate(chosen, budget, factorization, allocation)


def _allocate(chosen: list[tuple[str, nnx.Module]], budget,
              factorization: str, allocation: str) -> dict:
  """`allocate` for the (path, layer) pairs `compressible` chose."""
  _check_choice(allocation, ALLOCATIONS, "allocation")
  total = sum(_dense_params(node) for _, node in chosen)
  target = _target(budget, total)
  options = [_options(node, factorization) for _, node in chosen]
  if allocation == "uniform":
    picks = [_largest_within(o, target * _dense_params(node) / total)
             for o, (_, node) in zip(options, chosen)]
  else:
    picks = _share(options, target, [path for path, _ in chosen])
  return {path: option.rank for (path, _), option in zip(chosen, picks)}



@dataclasses.dataclass(frozen=True)
class _Option:
  rank: int | tuple
  params: int
  error2: float  # squared relative reconstruction error (estimated)


def _options(node: nnx.Module, factorization: str) -> list[_Option]:
  """A layer's candidate ranks, smallest first, each with its weights and
  estimated squared relative error (from the spectra; module docstring)."""
  weight = np.asarray(_weight(node), np.float64)
  norm2 = float(np.sum(weight**2)) or 1.0
  if isinstance(node, (nnx.Linear, nnx.LinearGeneral, nnx.Embed)):
    in_shape, out_shape = ((node.num_embeddings,), (node.features,)) if (
        isinstance(node, nnx.Embed)) else cj_layers.linear_features(
            node, "compress")
    n_in, n_out = math.prod(in_shape), math.prod(out_shape)
    if factorization == "tucker" and len(in_shape + out_shape) > 2:
      return _tucker_options(weight, range(weight.ndim), norm2,
                             every_rank=True)
    matrix = weight.reshape(n_in, n_out)
    _, s2 = _left_spectrum(matrix if n_in <= n_out else matrix.T)
    rest = norm2 - np.cumsum(s2)
    core = 0 if factorization == "svd" else 1  # Tucker's R x R core
    return [_Option(r if factorization == "svd" else (r, r),
                    r * (n_in + n_out) + core * r * r,
                    max(rest[r - 1], 0.0) / norm2)
            for r in range(1, len(s2) + 1)]
  if factorization == "cp":
    # A conv kernel (*spatial, Cin, Cout): its channel unfoldings.
    _, s2_in = _left_spectrum(_unfold(weight, -2))
    _, s2_out = _left_spectrum(_unfold(weight, -1))
    rest_in = norm2 - np.cumsum(s2_in)
    rest_out = norm2 - np.cumsum(s2_out)
    top = math.floor(weight.size / sum(weight.shape))  # rank "same"
    return [_Option(r, r * sum(weight.shape), max(
        rest_in[r - 1] if r <= len(rest_in) else 0.0,
        rest_out[r - 1] if r <= len(rest_out) else 0.0, 0.0) / norm2)
            for r in range(1, top + 1)]
  return _tucker_options(weight, (weight.ndim - 2, weight.ndim - 1), norm2)


def _tucker_options(weight: np.ndarray, modes, norm2: float,
                    every_rank: bool = False) -> list[_Option]:
  """Tucker ranks on `modes` of `weight` (the others kept whole: a conv's
  spatial modes), each with the error of projecting onto the leading
  singular vectors of those modes' unfoldings (the truncated HOSVD):
  ranks proportional to the modes' sizes, as tucker_rank's fractions are,
  or with `every_rank`, every combination of ranks (up to a million of
  them) that no other beats in both weights and error (modes of unlike
  sizes, as attention's (embed, heads, head_dim), need unlike fractions).
  """
  modes = tuple(modes)
  sizes = [weight.shape[m] for m in modes]
  kept = weight
  for m in modes:  # the HOSVD core on `modes`
    u, _ = _left_spectrum(_unfold(weight, m))
    kept = np.moveaxis(np.tensordot(kept, u, axes=([m], [0])), -1, m)
  kept = np.sum(kept**2, axis=tuple(set(range(weight.ndim)) - set(modes)))
  for axis in range(kept.ndim):  # kept[a, b, ...]: ranks (a + 1, b + 1, ..)
    kept = np.cumsum(kept, axis=axis)
  whole = math.prod(n for m, n in enumerate(weight.shape) if m not in modes)
  if every_rank and kept.size <= 10**6:
    ranks = np.stack(np.meshgrid(*[np.arange(1, n + 1) for n in kept.shape],
                                 indexing="ij"), -1).reshape(-1, kept.ndim)
    params = whole * np.prod(ranks, axis=1) + ranks @ np.asarray(sizes)
    error2 = np.maximum(norm2 - kept.reshape(-1), 0.0) / norm2
    options, best = [], math.inf
    for i in np.lexsort((error2, params)):  # by weights, then error
      if error2[i] < best:
        best = error2[i]
        options.append(_Option(tuple(int(r) for r in ranks[i]),
                               int(params[i]), float(error2[i])))
    return options
  options = {}
  for scale in np.linspace(0, 1, 4 * max(sizes) + 1):
    rank = tuple(max(1, min(kept.shape[i], round(scale * size)))
                 for i, size in enumerate(sizes))
    if rank not in options:
      options[rank] = _Option(
          rank, whole * math.prod(rank) + sum(
              size * r for size, r in zip(sizes, rank)),
          max(norm2 - float(kept[tuple(r - 1 for r in rank)]), 0.0) / norm2)
  return sorted(options.values(), key=lambda o: o.params)


def _share(options: list[list[_Option]], target: float,
           paths: list[str]) -> list[_Option]:
  """One option per layer, the weights within `target`, greedily
  maximising the summed log energy kept (module docstring)."""
  at = [0] * len(options)
  used = sum(o[0].params for o in options)
  if used > target:
    raise ValueError(
        f"compress: a budget of {target:.0f} weights is below the {used} "
        f"that the smallest ranks of {paths} need together; raise the budget "
        "or exclude layers")
  while True:
    best = None
    for layer, candidates in enumerate(options):
      here = candidates[at[layer]]
      for j in range(at[layer] + 1, len(candidates)):
        cost = candidates[j].params - here.params
        if used + cost > target:
          break
        gain = (_log_kept(candidates[j]) - _log_kept(here)) / max(cost, 1)
        if best is None or gain > best[0]:
          best = (gain, layer, j, cost)
    if best is None or best[0] < 0:
      return [candidates[i] for candidates, i in zip(options, at)]
    _, layer, j, cost = best
    at[layer], used = j, used + cost


def _log_kept(option: _Option) -> float:
  return math.log(max(1.0 - option.error2, 1e-12))


def _largest_within(options: list[_Option], limit: float) -> _Option:
  """The largest option whose weights fit `limit` (the smallest if none)."""
  fitting = [o for o in options if o.params <= limit]
  return fitting[-1] if fitting else options[0]


def _plain(value):
  """A NumPy scalar as the Python number it holds."""
  return value.item() if isinstance(value, np.generic) else value


def _filters(value, kind: str) -> tuple:
  """`include`/`exclude` as a tuple: one filter (a glob or a layer type)
  alone is taken as it is, not iterated character by character."""
  if value is None or isinstance(value, (str, type)):
    return () if value is None else (value,)
  filters = tuple(value)
  bad = [f for f in filters if not isinstance(f, (str, type))]
  if bad:
    raise ValueError(f"compress: {kind} takes globs on paths and layer "
                     f"types, got {bad[0]!r}")
  return filters


def check_budget(budget) -> None:
  """Raise ValueError unless `budget` is a fraction in (0, 1] or a count
  of weights >= 1 (NumPy scalars too)."""
  budget = _plain(budget)
  if isinstance(budget, bool) or not isinstance(budget, (int, float)) or (
      isinstance(budget, float) and not 0 < budget <= 1) or budget <= 0:
    raise ValueError(f"compress: budget must be a float in (0, 1] (the "
                     f"fraction of weights kept) or an int count of weights "
                     f">= 1, got {budget!r}")


def _check_ranks_within(chosen, ranks: dict, budget, factorization: str,
                        implementation: str) -> None:
  """Refuse `ranks` that keep more weights than `budget`, before any
  decomposition (the layers' shapes alone, by `nnx.eval_shape`)."""
  total = sum(_dense_params(node) for _, node in chosen)
  target = _target(budget, total)
  kept = 0
  for path, node in chosen:
    layer = nnx.eval_shape(lambda n=node, p=path: _replace(
        n, factorization, ranks[p], "random", implementation, None,
        nnx.Rngs(0), p))
    kept += cj_layers.count_params(layer) - _bias_params(layer)
  if kept > target:
    raise ValueError(
        f"compress: the ranks given keep {kept} of the {total} weights, "
        f"more than budget {budget!r} allows ({target:.0f}); give budget="
        "None to keep these ranks, or smaller ranks")


def _target(budget, total: int) -> float:
  """The weights `budget` keeps of `total`."""
  budget = _plain(budget)
  check_budget(budget)
  if isinstance(budget, float):
    return budget * total
  if budget > total:
    raise ValueError(
        f"compress: budget {budget} weights is not in 1..{total}, the "
        "weights of the layers it replaces")
  return float(budget)


# --- Replacing layers --------------------------------------------------------


def _replace(node, factorization, rank, init, implementation, key, rngs,
             path) -> nnx.Module:
  """The factorized layer that takes `node`'s place."""
  where = f"compress: the {type(node).__name__} at {path!r}"
  if isinstance(node, nnx.Embed):
    if init == "decomposed":
      return cj_layers.LowRankEmbed.from_embed(node, rank=int(rank))
    return cj_layers.LowRankEmbed(
        node.num_embeddings, node.features, rank=int(rank), dtype=node.dtype,
        param_dtype=node.param_dtype, rngs=rngs)
  if isinstance(node, (nnx.Linear, nnx.LinearGeneral)):
    in_shape, out_shape = cj_layers.linear_features(node, where)
    if factorization == "svd":
      cls, kwargs = cj_layers.LowRankDense, dict(rank=int(rank))
    else:
      # An int is the rank of both modes of a matrix; a tuple, a fraction
      # or 'same' is TuckerDense's own rank spec.
      matrix = isinstance(rank, (int, np.integer)) and len(
          in_shape + out_shape) == 2
      cls, kwargs = cj_layers.TuckerDense, dict(
          in_shape=in_shape, out_shape=out_shape,
          rank=(rank, rank) if matrix else rank)
    if init == "decomposed":
      return cls.from_linear(node, **kwargs, implementation=implementation)
    kwargs.setdefault("in_shape", in_shape)
    kwargs.setdefault("out_shape", out_shape)
    return cls(**kwargs, use_bias=node.bias is not None, dtype=node.dtype,
               param_dtype=node.param_dtype, precision=node.precision,
               implementation=implementation, rngs=rngs)
  cls = (cj_layers.CPConv if factorization == "cp"
         else cj_layers.TuckerConv)
  if init == "random":
    return cls(**cj_layers.from_conv_kwargs(node, where), rank=rank,
               implementation=implementation, rngs=rngs)
  if factorization == "cp":
    return cls.from_conv(node, rank, key=key, implementation=implementation)
  return cls.from_conv(node, rank, implementation=implementation)


def set_at(model: nnx.Module, path: str, layer) -> None:
  """Put `layer` at `path` ("blocks/0/conv", as `compressible` names it:
  attributes, list and tuple indices, dict keys, in `nnx.List`, `nnx.Dict`
  or containers wrapped in `nnx.data`) in `model`, in place. The model
  itself (path "") can't be replaced in place: `compress` returns its new
  layer."""
  if not path:
    raise ValueError("set_at: path '' is the model itself, which can't be "
                     "replaced in place; use the new layer as the model")
  keys, node = [], model
  for part in path.split("/"):
    found = [k for k in _children(node) if str(k) == part]
    if not found:
      raise ValueError(f"set_at: {path!r} names no layer of the model: "
                       f"{'/'.join(map(str, keys)) or 'the model'} has no "
                       f"{part!r}")
    keys.append(found[0])
    node = _children(node)[found[0]]
  _set_keys(model, tuple(keys), layer)


def _children(node) -> dict:
  """A graph node's children by key, as Flax's graph sees them (attributes
  of a module, items of a list, tuple or dict), less its own bookkeeping."""
  return {k: v for k, v in nnx.graph.get_node_impl(node).node_dict(
      node).items() if not (isinstance(k, str) and k.startswith("_pytree__"))}


def _set_keys(model, keys: tuple, layer) -> None:
  """`set_at` by the raw keys of a path; a tuple holding the place is
  rebuilt and set where it sits."""
  *parents, leaf = keys
  node = model
  for key in parents:
    node = _children(node)[key]
  if isinstance(node, tuple):
    items = list(node)
    items[leaf] = layer
    _set_keys(model, tuple(parents), nnx.data(type(node)(items)))
  elif isinstance(node, (list, dict, nnx.List, nnx.Dict)):
    node[leaf] = layer
  else:
    setattr(node, leaf, layer)


def _weight(node) -> jax.Array:
  """What the layer computes with (a masked conv's kernel times its mask;
  an embedding's table)."""
  if isinstance(node, nnx.Embed):
    return node.embedding[...]
  return (cj_layers.effective_kernel(node) if isinstance(node, nnx.Conv)
          else node.kernel[...])


def _rebuilt(layer) -> jax.Array:
  if isinstance(layer, cj_layers.LowRankEmbed):
    return layer.table()
  if isinstance(layer, (cj_layers.TuckerDense, cj_layers.LowRankDense)):
    return layer.weight_tensor()
  return layer.kernel_tensor()


def _dense_params(node) -> int:
  weight = node.embedding if isinstance(node, nnx.Embed) else node.kernel
  return math.prod(weight.shape)


def _bias_params(layer) -> int:
  bias = getattr(layer, "bias", None)
  return 0 if bias is None else math.prod(bias.shape)


def _left_spectrum(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The left singular vectors of a wide `matrix` and its squared singular
  values, largest first (from its Gram matrix: one small eigh)."""
  values, vectors = np.linalg.eigh(matrix @ matrix.T)
  return vectors[:, ::-1], np.maximum(values[::-1], 0.0)


def _unfold(weight: np.ndarray, mode: int) -> np.ndarray:
  return np.moveaxis(weight, mode, 0).reshape(weight.shape[mode], -1)


def _describe(node) -> str:
  if isinstance(node, nnx.Linear):
    return f"Linear({node.in_features}->{node.out_features})"
  if isinstance(node, nnx.LinearGeneral):
    return f"LinearGeneral({node.in_features}->{node.out_features})"
  if isinstance(node, nnx.Embed):
    return f"Embed({node.num_embeddings}, {node.features})"
  size = "x".join(map(str, node.kernel_size))
  return f"Conv({node.in_features}->{node.out_features}, {size})"


def references(model: nnx.Module) -> dict[int, list[str]]:
  """{id(layer): its paths} for every layer with a weight (`nnx.Conv`,
  `nnx.Linear`, `nnx.LinearGeneral`, `nnx.Einsum`, `nnx.Embed`) of
  `model`, in graph order: a layer held in several places (tied, shared)
  has several paths, and `compress` replaces it at all of them with one
  new layer."""
  return {i: ["/".join(map(str, keys)) for keys in paths]
          for i, (_, paths) in _layers(model).items()}


def _layers(model) -> dict[int, tuple[nnx.Module, list[tuple]]]:
  """{id(layer): (layer, the raw key paths it sits at)} for every layer
  with a weight (_WEIGHTED) of `model`, in graph order."""
  if isinstance(model, _WEIGHTED):
    return {id(model): (model, [()])}
  found = {}

  def walk(node, path: tuple, seen: frozenset) -> None:
    for key, child in _children(node).items():
      where = (*path, key)
      if isinstance(child, _WEIGHTED):
        found.setdefault(id(child), (child, []))[1].append(where)
      elif (id(child) not in seen and not isinstance(child, nnx.Variable)
            and nnx.graph.is_node(child)):
        walk(child, where, seen | {id(child)})

  walk(model, (), frozenset({id(model)}))
  return found


def _match(f: Filter, path: str, node) -> bool:
  if isinstance(f, type):
    return isinstance(node, f)
  return fnmatch.fnmatchcase(path, f)


def _name(f: Filter) -> str:
  return f.__name__ if isinstance(f, type) else f


def _check_choice(value, valid, field: str) -> None:
  if value not in valid:
    raise ValueError(f"compress: {field} must be one of {valid}, got "
                     f"{value!r}")
