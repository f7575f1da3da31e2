"""Whole-model compression: a trained model's `nnx.Conv`, `nnx.Linear`,
`nnx.LinearGeneral` (attention's projections), `nnx.Einsum` (where it is a
LinearGeneral's product) and `nnx.Embed` layers swapped for CP, Tucker,
low-rank or TT layers decomposed from their weights (or, given calibration
data, for their outputs on it), the ranks shared out among the layers under
one parameter budget.

  small, report = cj.compress(model, budget=0.1, factorization="tucker",
                              exclude=("convs/0", "out"))
  print(report.table())

  small, report = cj.compress(
      vit, budget=0.25, factorization={nnx.Conv: "tucker", "*mlp*": "tt",
                                       nnx.LinearGeneral: "svd"},
      calibration=[images[i:i + 64] for i in range(0, 512, 64)])

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
  "tt": each `nnx.Conv` by a `TTConv` (TT-SVD of its kernel as (Cin,
    *kernel_size, Cout)) and each `nnx.Linear`, or `nnx.LinearGeneral` of
    one input and one output axis, by a `TTDense`: a TT-matrix whose input
    and output sizes are each factored into as many balanced modes (up to
    TT_MODES; `tt_shapes`); the rank R is every bond's, capped at what the
    bond can hold.
  A LinearGeneral must contract the input's last axes, with no batch axes
  (`cpac_jax.layers.linear_features`). An `nnx.Einsum` is taken as the
  LinearGeneral it computes where it computes one: its kernel's axes
  contract the input's last axes or are appended to the output after the
  input's others ("btd,ndh->btnh", "btnh,nhd->btd", "...d,df->...f"; not
  "bnd,ndh->bnh", whose kernel has a batch axis). Layers the factorization
  doesn't take are left as they are, and the report names them
  (`CompressionReport.left_alone`).

  `factorization` is one of these names for every layer, or a mapping
  from filters (a layer type or a glob on the path, as `include` takes) to
  names, the first that matches a layer choosing its factorization:
  {nnx.Conv: "cp", nnx.Linear: "svd"}. A layer no filter matches is left
  alone. The layers share one budget whatever their factorizations.

Data-aware decomposition (`calibration`, batches of the model's inputs):
one pass of the model over them collects each chosen layer's input
covariance (`cpac_jax.calibration`), and each layer is decomposed to keep
its outputs on that data, not its weights: the weight's input side is
whitened by the covariance's Cholesky factor L (L^T W), decomposed, and
mapped back by L^{-T}. For "svd" that minimises the output error
(SVD-LLM), up to a 1% ridge (`cpac_jax.calibration.DAMPING`), and the
product is split evenly between the two factors (`_balance`); "tucker"
and "cp" whiten the input mode(s) of their weight (a conv's input
channels; each input axis of a LinearGeneral, by its own covariance),
"tt" a conv's input channels (its first core) and each input mode of a
TT-matrix dense layer by that mode's own covariance (a Kronecker-factored
whitening, mapped back core by core, the cores then made left-orthonormal
as TT-SVD leaves them); an embedding table is decomposed from its weights
alone. The
model runs in eval mode (a copy: the model is left as it was). The
global allocation then uses the whitened spectra, so it shares the budget
by output error, and the report gives each layer's output error on the
calibration data, measured in a second pass.

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
    layer's error after its actual decomposition. For "tt", the error of
    TT-SVD's truncations of the kernel's unfoldings summed, the bound
    TT-SVD keeps within.

`budget_of="macs"` makes the budget one of multiply-adds instead of
weights: those of the replaced layers on the input shapes one batch gives
them (`inputs`, or the first calibration batch), each new layer at the
cheaper of its factorized and reconstructed paths (its `flops`), an
embedding's lookup counting none before and its rank-R product after. The
allocations work as above with multiply-adds as the cost (for Tucker's
search over every rank combination, among those no other beats in
weights and error). Given one, the report gives every layer's
multiply-adds before and after.

`rank_multiple` k keeps the allocation to ranks that are multiples of k
(each mode's own size also allowed: a Tucker mode kept whole), for the
tile sizes accelerators prefer.
"""

import dataclasses
import fnmatch
import glob
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cpac_jax import calibration as cj_calibration
from cpac_jax import functional, tensor
from cpac_jax import layers as cj_layers

__all__ = ["ALLOCATIONS", "BUDGETS_OF", "FACTORIZATIONS", "INITS",
           "CompressionReport", "LayerReport", "allocate", "check_budget",
           "compress", "compressible", "load", "references", "save",
           "set_at", "tt_shapes"]

FACTORIZATIONS = ("cp", "tucker", "svd", "tt")
ALLOCATIONS = ("global", "uniform")
BUDGETS_OF = ("params", "macs")
# "decomposed": the new layers from the trained weights; "random": the same
# architecture freshly initialised (to train it from scratch).
INITS = ("decomposed", "random")
# (an nnx.Einsum where it computes what a LinearGeneral does: `_as_linear`)
_TAKES = {"cp": (nnx.Conv,),
          "tucker": (nnx.Conv, nnx.Linear, nnx.LinearGeneral, nnx.Einsum),
          "svd": (nnx.Linear, nnx.LinearGeneral, nnx.Einsum, nnx.Embed),
          "tt": (nnx.Conv, nnx.Linear, nnx.LinearGeneral, nnx.Einsum)}
# The most modes "tt" factors a dense layer's input and output sizes into.
TT_MODES = 4
# Every layer with a weight `compress` looks at; those of no factorization's
# _TAKES are reported left alone.
_WEIGHTED = (nnx.Conv, nnx.Linear, nnx.LinearGeneral, nnx.Einsum, nnx.Embed)


@dataclasses.dataclass(frozen=True)
class LayerReport:
  """What `compress` did to one layer."""

  path: str                 # where it sits, e.g. "convs/1"
  layer: str                # what it was: "Conv(32->64, 3x3)"
  factorization: str        # "cp", "tucker", "svd" or "tt"
  rank: int | tuple         # the rank it got
  params_before: int        # weights (bias excluded: it is kept as it was)
  params_after: int
  error: float | None       # ||W - W_hat|| / ||W||; None if not decomposed
  shared_with: tuple[str, ...] = ()  # its other paths, if it is shared
  # ||y - y_hat|| / ||y - b|| on the calibration data (its outputs less the
  # bias); None without calibration
  output_error: float | None = None
  # multiply-adds on the inputs given (module docstring); None without
  macs_before: int | None = None
  macs_after: int | None = None


@dataclasses.dataclass(frozen=True)
class CompressionReport:
  """The layers `compress` replaced, and the budget it shared among them."""

  factorization: str        # a name, or "Conv: cp, Linear: svd" for a mapping
  allocation: str
  budget: float | int | None  # None: the ranks were given, no budget
  layers: tuple[LayerReport, ...]
  # "path (Einsum)": weight layers kept as they were, neither replaced nor
  # excluded (no factorization takes them, or this one doesn't)
  left_alone: tuple[str, ...] = ()
  budget_of: str = "params"  # what the budget counts: weights or macs

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
            "budget_of": self.budget_of,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "compression": self.compression,
            "layers": [dataclasses.asdict(layer) for layer in self.layers],
            "left_alone": list(self.left_alone)}

  def table(self) -> str:
    """The per-layer report as a markdown table, with a total row."""
    calibrated = any(layer.output_error is not None for layer in self.layers)
    counted = any(layer.macs_before is not None for layer in self.layers)
    lines = ["| layer | was | factorization | rank | weights before | "
             "weights after | compression | relative error |"
             + (" output error |" if calibrated else "")
             + (" multiply-adds before | after |" if counted else ""),
             "|---|---|---|---|---:|---:|---:|---:|"
             + ("---:|" if calibrated else "") + ("---:|---:|" if counted
                                                   else "")]
    for layer in self.layers:
      rank = ("x".join(map(str, layer.rank)) if isinstance(layer.rank, tuple)
              else str(layer.rank))
      error = "" if layer.error is None else f"{layer.error:.3f}"
      where = layer.path + "".join(f" (= {p})" for p in layer.shared_with)
      lines.append(
          f"| {where} | {layer.layer} | {layer.factorization} | {rank} "
          f"| {layer.params_before} | {layer.params_after} | "
          f"{layer.params_before / layer.params_after:.1f}x | {error} |"
          + (f" {layer.output_error:.3f} |" if calibrated else "")
          + (f" {layer.macs_before} | {layer.macs_after} |" if counted
             else ""))
    rule = ("ranks given" if self.budget is None
            else f"{self.allocation} {self.budget}"
            + (" of multiply-adds" if self.budget_of == "macs" else ""))
    macs = [sum(getattr(layer, f) for layer in self.layers)
            for f in ("macs_before", "macs_after")] if counted else None
    lines.append(f"| total | | {self.factorization} | {rule} | "
                 f"{self.params_before} | "
                 f"{self.params_after} | {self.compression:.1f}x | |"
                 + (" |" if calibrated else "")
                 + (f" {macs[0]} | {macs[1]} |" if counted else ""))
    if self.left_alone:
      lines.append(f"\nLeft as they were: {', '.join(self.left_alone)}.")
    return "\n".join(lines)


Filter = str | type


def compressible(model: nnx.Module,
                 factorization: str | Mapping[Filter, str] = "tucker", *,
                 include: Sequence[Filter] | None = None,
                 exclude: Sequence[Filter] = ()
                 ) -> list[tuple[str, nnx.Module]]:
  """The (path, layer) pairs `compress` would replace, in graph order.

  A filter is a glob on the path ("convs/*", "out") or a layer type
  (`nnx.Linear`); `include` and `exclude` take one filter or a sequence of
  them. `include` None: every layer that can take its factorization
  (`nnx.Conv` for "cp"; also `nnx.Linear` and `nnx.LinearGeneral` for
  "tucker"; those two and `nnx.Embed` for "svd"; Conv, Linear and a
  LinearGeneral of one input and one output axis for "tt"; an `nnx.Einsum`
  as the LinearGeneral it computes, where it computes one). With a
  mapping for `factorization`, only the layers one of its filters matches.

  Raises:
    ValueError: an unknown factorization, a filter that matches no layer
      with a weight, an included layer that can't take its factorization,
      a LinearGeneral or Conv no factorized layer computes, or nothing left
      to replace.
  """
  return [(path, node) for path, node, _ in
          _choose(model, factorization, include, exclude)[0]]


def _choose(model, factorization, include, exclude):
  """`compressible`'s (path, layer, factorization) triples, and the weight
  layers left alone ("path (Type)": neither chosen nor excluded)."""
  _check_factorization(factorization)
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
  if not isinstance(factorization, str):
    for f in factorization:
      if not any(_matches(f, path, node) for path, node in candidates):
        raise ValueError(
            f"compress: factorization filter {_name(f)!r} matches no layer "
            f"with a weight; the model's are at {paths}")
  chosen, left_alone = [], []
  for path, node in candidates:
    if any(_matches(f, path, node) for f in exclude):
      continue
    kind = factorization if isinstance(factorization, str) else next(
        (v for f, v in factorization.items() if _matches(f, path, node)),
        None)
    if include is not None and any(_matches(f, path, node) for f in include):
      if kind is None:
        raise ValueError(
            f"compress: the {type(node).__name__} at {path!r} is included, "
            f"but no filter of factorization {_describe_kinds(factorization)!r}"
            " matches it; add one or exclude it")
      if not _takes(kind, node):
        raise ValueError(
            f"compress: the {type(node).__name__} at {path!r} can't take "
            f"factorization {kind!r} ({_what_takes(kind, node)}); exclude it "
            "or choose another")
      chosen.append((path, node, kind))
    elif include is None and kind is not None and _takes(kind, node):
      chosen.append((path, node, kind))
    else:
      left_alone.append(f"{path} ({type(node).__name__})")
  if not chosen:
    raise ValueError(
        f"compress: no layer left to replace with {factorization!r} among "
        f"{paths} (include={include!r}, exclude={exclude!r})")
  for path, node, _ in chosen:
    where = f"compress: the {type(node).__name__} at {path!r}"
    if isinstance(node, nnx.Conv):
      cj_layers.from_conv_kwargs(node, where)
    elif not isinstance(node, (nnx.Embed, nnx.Einsum)):
      cj_layers.linear_features(node, where)
  return chosen, tuple(left_alone)


def _einsum_axes(einsum: nnx.Einsum) -> tuple | None:
  """(the kernel's axes in a LinearGeneral's order, its in_features, its
  out_features) where `einsum` computes what an `nnx.LinearGeneral` does;
  None where none does. One does where the einsum is a product with a
  grouped matrix: its kernel's axes either contract the input's last axes
  or are appended, after the input's other axes in their order, to the
  output ("btd,dh->bth", attention's "btd,ndh->btnh" and "btnh,nhd->btd";
  not "bnd,ndh->bnh", whose kernel has a batch axis)."""
  spec = (einsum.einsum_str or "").replace(" ", "")
  if spec.count(",") != 1 or spec.count("->") != 1:
    return None  # its string given at the call: not known here
  operands, out = spec.split("->")
  x, k = operands.split(",")
  if x.startswith("...") and out.startswith("..."):  # leading batch axes
    x, out = x[3:], out[3:]
  if not (x + k + out).isalpha() or any(len(set(t)) != len(t)
                                        for t in (x, k, out)):
    return None
  n = sum(c in k for c in x)
  kept, contracted = x[:len(x) - n], x[len(x) - n:]
  new = out[len(kept):]
  if (n == 0 or set(kept) & set(k) or out != kept + new
      or sorted(k) != sorted(contracted + new)):
    return None
  shape = dict(zip(k, einsum.kernel.shape))
  out_features = tuple(shape[c] for c in new)
  if (einsum.bias is not None
      and math.prod(einsum.bias.shape) != math.prod(out_features)):
    return None
  return ([k.index(c) for c in contracted + new],
          tuple(shape[c] for c in contracted), out_features)


def _as_linear(einsum: nnx.Einsum, weights: bool) -> nnx.LinearGeneral:
  """The `nnx.LinearGeneral` computing what `einsum` does (`_einsum_axes`),
  with its kernel and bias (`weights`) or zeros."""
  order, in_features, out_features = _einsum_axes(einsum)
  twin = nnx.LinearGeneral(
      in_features, out_features, axis=tuple(range(-len(in_features), 0)),
      use_bias=einsum.bias is not None, dtype=einsum.dtype,
      param_dtype=einsum.param_dtype, precision=einsum.precision,
      kernel_init=nnx.initializers.zeros, rngs=nnx.Rngs(0))
  if weights:
    twin.kernel[...] = jnp.transpose(einsum.kernel[...], order)
    if einsum.bias is not None:
      twin.bias[...] = einsum.bias[...].reshape(out_features)
  return twin


def _with_linears(model, chosen, weights: bool):
  """`model` and `chosen` with each chosen `nnx.Einsum` replaced by its
  LinearGeneral (`_as_linear`: with its `weights`, or fresh), at all of
  its places, in a copy of the model; as they were where none is
  chosen."""
  if not any(isinstance(node, nnx.Einsum) for _, node, _ in chosen):
    return model, chosen
  if isinstance(model, nnx.Einsum):
    twin = _as_linear(model, weights)
    return twin, [("", twin, chosen[0][2])]
  refs, copy = references(model), nnx.clone(model)
  for _, node, _ in chosen:
    if isinstance(node, nnx.Einsum):
      twin = _as_linear(node, weights)
      for where in refs[id(node)]:
        set_at(copy, where, twin)
  at = {"/".join(map(str, paths[0])): node
        for node, paths in _layers(copy).values()}
  return copy, [(path, at[path], kind) for path, _, kind in chosen]


def _takes(factorization: str, node) -> bool:
  """Whether `factorization` can replace `node` ("tt" a LinearGeneral of
  one input and one output axis only: a TT-matrix's modes tensorize one
  axis each side; an Einsum where it computes a LinearGeneral's product,
  `_einsum_axes`, as that LinearGeneral)."""
  if not isinstance(node, _TAKES[factorization]):
    return False
  if isinstance(node, nnx.Einsum):
    axes = _einsum_axes(node)
    if axes is None:
      return False
    in_shape, out_shape = axes[1:]
  elif factorization == "tt" and isinstance(node, nnx.LinearGeneral):
    in_shape, out_shape = cj_layers.linear_features(node, "compress")
  else:
    return True
  return factorization != "tt" or len(in_shape) == len(out_shape) == 1


def _what_takes(factorization: str, node=None) -> str:
  takes = " and ".join(t.__name__ for t in _TAKES[factorization])
  text = (f"it replaces {takes} of one input and one output axis"
          if factorization == "tt" else f"it replaces {takes}")
  if isinstance(node, nnx.Einsum) and _einsum_axes(node) is None:
    text += ("; an Einsum where it computes a LinearGeneral's product (the "
             "kernel's axes contracting the input's last axes or appended "
             "to the output after the input's others, in order), which "
             + (f"{node.einsum_str!r} does not" if node.einsum_str else
                "an einsum given its string at the call can't be known to"))
  return text


def _check_factorization(factorization) -> None:
  if isinstance(factorization, str):
    _check_choice(factorization, FACTORIZATIONS, "factorization")
    return
  if not isinstance(factorization, Mapping) or not factorization:
    raise ValueError(
        f"compress: factorization must be one of {FACTORIZATIONS} or a "
        "non-empty mapping from filters (layer types, globs on paths) to "
        f"them, got {factorization!r}")
  for f, kind in factorization.items():
    _filters(f, "factorization")
    _check_choice(kind, FACTORIZATIONS, f"factorization[{_name(f)!r}]")


def _describe_kinds(factorization) -> str:
  """The report's factorization: the name, or "Conv: cp, Linear: svd"."""
  if isinstance(factorization, str):
    return factorization
  return ", ".join(f"{_name(f)}: {kind}" for f, kind in factorization.items())


def tt_shapes(in_features: int, out_features: int
              ) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """The (in_shape, out_shape) "tt" gives a dense layer: both sizes
  factored into the same number of modes d, as many as the smaller has
  prime factors, at most TT_MODES, each as balanced as its primes allow
  (largest first).

  Example:
    >>> tt_shapes(784, 625)
    ((7, 7, 4, 4), (5, 5, 5, 5))
  """
  modes = max(1, min(TT_MODES, len(_primes(in_features)),
                     len(_primes(out_features))))
  return _balanced(in_features, modes), _balanced(out_features, modes)


def _primes(n: int) -> list[int]:
  found, p = [], 2
  while p * p <= n:
    while n % p == 0:
      found.append(p)
      n //= p
    p += 1
  return found + ([n] if n > 1 else [])


def _balanced(n: int, modes: int) -> tuple[int, ...]:
  """`n` as `modes` factors: its primes, largest first, each given to the
  smallest factor so far."""
  factors = [1] * modes
  for p in sorted(_primes(n), reverse=True):
    factors[factors.index(min(factors))] *= p
  return tuple(sorted(factors, reverse=True))


def compress(model: nnx.Module, budget: float | int | None = None,
             factorization: str | Mapping[Filter, str] = "tucker", *,
             include: Sequence[Filter] | None = None,
             exclude: Sequence[Filter] = (), allocation: str = "global",
             ranks: Mapping[str, object] | None = None,
             init: str = "decomposed", implementation: str = "auto",
             calibration: Iterable | None = None, rank_multiple: int = 1,
             budget_of: str = "params", inputs=None,
             key: jax.Array | None = None,
             rngs: nnx.Rngs | None = None
             ) -> tuple[nnx.Module, CompressionReport]:
  """A copy of `model` (left untouched) with its Conv, Linear,
  LinearGeneral, Einsum and Embed layers (`compressible`) replaced by CP,
  Tucker, low-rank or TT layers, and the report.

  Args:
    model: any Flax NNX model; the layers may sit anywhere in it
      (attributes, nested modules, lists, tuples and dicts, `nnx.List`,
      `nnx.Dict`, containers wrapped in `nnx.data`).
    budget: the replaced layers' weights (or, budget_of "macs", their
      multiply-adds) to keep: a float in (0, 1], the fraction (0.1 ~ 10x
      fewer), or an int, their count; None: 0.1. With
      `ranks`, None (the ranks decide) or a bound the ranks must keep
      within: ranks that keep more are refused, naming both.
    factorization: "cp", "tucker", "svd" or "tt", or a mapping from
      filters to them, the first matching a layer choosing its own (see the
      module docstring).
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
    calibration: batches of the model's inputs (each an array, called as
      model(batch), or a tuple of its arguments) to decompose for the
      layers' outputs on (module docstring); a list or another iterable
      that can be gone through twice (the second pass measures the output
      errors). The model runs on them eagerly. None: decompose the
      weights.
    rank_multiple: the allocation's ranks are multiples of it (or a mode
      kept whole).
    budget_of: "params" (the budget counts weights) or "macs" (it counts
      multiply-adds on `inputs`; module docstring).
    inputs: one batch of the model's inputs (an array, or a tuple of its
      arguments) whose shapes the multiply-adds are counted on; default
      the first calibration batch. Given, the report counts them.
    key: seeds CP-ALS (default: key 0).
    rngs: random streams of init "random" (default: Rngs(0)).

  Raises:
    ValueError: a bad budget, factorization, allocation, init, filter,
      rank or rank_multiple; a budget below what the smallest ranks need;
      given ranks that keep more weights than a given budget; calibration
      with init "random", or that never reaches a chosen layer.
  """
  _check_choice(init, INITS, "init")
  budget = _plain(budget)
  chosen, left_alone = _choose(model, factorization, include, exclude)
  described = {path: _describe(node) for path, node, _ in chosen}
  # their weights where they are decomposed, or size the allocation
  model, chosen = _with_linears(model, chosen,
                                init == "decomposed" or ranks is None)
  paths = [path for path, _, _ in chosen]
  probe = _Probe(model, chosen, calibration, init, budget_of, inputs)
  given = ranks is not None
  if not given:
    ranks = _allocate(chosen, 0.1 if budget is None else budget,
                      allocation, probe, rank_multiple)
  else:
    _check_choice(allocation, ALLOCATIONS, "allocation")
    if sorted(ranks) != sorted(paths):
      raise ValueError(
          f"compress: ranks are given for {sorted(ranks)}, but the layers "
          f"chosen are {paths}")
    ranks = {path: tuple(rank) if isinstance(rank, list) else rank
             for path, rank in ranks.items()}
    if budget is not None:
      _check_ranks_within(chosen, ranks, budget, implementation, probe)

  refs = references(model)
  new = nnx.clone(model)
  key = jax.random.key(0) if key is None else key
  rngs = rngs or nnx.Rngs(0)
  reports, replaced = [], {}
  for i, (path, node, kind) in enumerate(chosen):
    layer = _replace(node, kind, ranks[path], init, implementation,
                     jax.random.fold_in(key, i), rngs, path,
                     probe.whitenings.get(path, ()))
    replaced[path] = (node, layer)
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
    macs = probe.layer_macs(path, layer)
    reports.append(LayerReport(
        path=path, layer=described[path], factorization=kind,
        rank=ranks[path], params_before=_dense_params(node),
        params_after=cj_layers.count_params(layer) - _bias_params(layer),
        error=error,
        shared_with=tuple(p for p in refs[id(node)] if p != path),
        macs_before=probe.dense_macs(path, node), macs_after=macs))
  if calibration is not None:
    errors = probe.output_errors(replaced)
    reports = [dataclasses.replace(r, output_error=errors[r.path])
               for r in reports]
  return new, CompressionReport(
      _describe_kinds(factorization), allocation,
      0.1 if budget is None and not given else budget, tuple(reports),
      left_alone=left_alone, budget_of=budget_of)


def _check_calibration(calibration, init: str) -> None:
  if init != "decomposed":
    raise ValueError(f"compress: calibration decomposes the layers for "
                     f"their outputs; init {init!r} decomposes nothing (give "
                     "init='decomposed' or no calibration)")
  if iter(calibration) is calibration:
    raise ValueError(
        "compress: calibration is an iterator, which can be gone through "
        "once; it is read twice (statistics, then output errors): give a "
        "list of batches or a re-iterable loader")


class _Probe:
  """What `compress` learns by running the model (a copy of it in eval
  mode, so the model's own state, batch statistics and random streams,
  stays as it was): the chosen layers' input whitenings from the
  calibration batches (`whitenings`, {path: [(axes, L)]}, `_calibrate`),
  their input shapes on one batch (for multiply-adds), and the output
  errors of their replacements."""

  def __init__(self, model, chosen, calibration, init: str, budget_of: str,
               inputs):
    _check_choice(budget_of, BUDGETS_OF, "budget_of")
    if calibration is not None:
      _check_calibration(calibration, init)
    self.budget_of, self.calibration = budget_of, calibration
    if inputs is None and calibration is not None:
      inputs = next(iter(calibration), None)
      if inputs is None:
        raise ValueError("compress: calibration holds no batch; give a list "
                         "of the model's inputs (arrays, or tuples of its "
                         "arguments)")
    if inputs is None and budget_of == "macs":
      raise ValueError("compress: budget_of 'macs' counts multiply-adds on "
                       "the layers' inputs; give inputs= (one batch of the "
                       "model's inputs) or calibration=")
    self.whitenings, self.shapes = {}, {}
    if inputs is None and calibration is None:
      return
    self.model = nnx.clone(model)
    self.model.eval()  # running statistics, no dropout: the model in use
    at = {"/".join(map(str, paths[0])): node
          for node, paths in _layers(self.model).values()}
    self.layers = {path: at[path] for path, _, _ in chosen}
    self.whitenings = _calibrate(self.model, chosen, calibration,
                                 self.layers)
    if inputs is not None:
      self.shapes = cj_calibration.input_shapes(self.model, self.layers,
                                                inputs)
    self.geometries = {path: cj_layers.conv_geometry(node)
                       for path, node, _ in chosen
                       if isinstance(node, nnx.Conv)}

  def macs(self, path, node, kind, rank) -> int | None:
    """The multiply-adds of `node` replaced at `rank`, over its calls on
    the inputs' batch; None without inputs."""
    if path not in self.shapes:
      return None
    return sum(_macs(node, kind, rank, shape, self.geometries.get(path))
               for shape in self.shapes[path])

  def layer_macs(self, path, layer) -> int | None:
    """The multiply-adds of a built (or abstract) replacement `layer` over
    its calls: the cheaper of its factorized and reconstructed paths (its
    `flops`); a LowRankEmbed's lookup of R then its R x features product.
    None without inputs."""
    if path not in self.shapes:
      return None
    if isinstance(layer, cj_layers.LowRankEmbed):
      return sum(math.prod(shape) * layer.rank * layer.features
                 for shape in self.shapes[path])
    return sum(min(flops["factorized"], flops["reconstructed"])
               for flops in map(layer.flops, self.shapes[path]))

  def dense_macs(self, path, node) -> int | None:
    if path not in self.shapes:
      return None
    return sum(_dense_macs(node, shape, self.geometries.get(path))
               for shape in self.shapes[path])

  def output_errors(self, replaced: dict) -> dict:
    return cj_calibration.output_errors(
        self.model, {path: (self.layers[path], layer)
                     for path, (_, layer) in replaced.items()},
        self.calibration)


def _macs(node, kind: str, rank, shape, geometry) -> int:
  """Multiply-adds of `node` replaced by `kind` at `rank` on an input of
  `shape`: the cheaper of the new layer's factorized and reconstructed
  paths (the layers' `flops`)."""
  if isinstance(node, nnx.Embed):  # a lookup of R, then R x features
    return math.prod(shape) * int(rank) * node.features
  if isinstance(node, nnx.Conv):
    out = node.out_features
    if kind == "cp":
      flops = functional.cp_conv_flops(shape, out, int(rank), geometry)
    elif kind == "tucker":
      flops = functional.tucker_conv_flops(shape, out, rank, geometry)
    else:
      modes = (node.in_features, *geometry.kernel_size, out)
      flops = functional.tt_conv_flops(shape, out,
                                       tensor.tt_rank(modes, rank), geometry)
  else:
    in_shape, out_shape = cj_layers.linear_features(node, "compress")
    n_in, n_out = math.prod(in_shape), math.prod(out_shape)
    batch = math.prod(shape[:len(shape) - len(in_shape)])
    if kind == "svd":
      flops = functional.low_rank_dense_flops(batch, n_in, n_out, int(rank))
    elif kind == "tucker":
      flops = functional.tucker_dense_flops(
          shape, in_shape, out_shape,
          rank if isinstance(rank, tuple) else (rank, rank))
    else:
      tin, tout = tt_shapes(n_in, n_out)
      flops = functional.tt_dense_flops(
          (batch, n_in), tin, tout,
          tensor.tt_rank([i * o for i, o in zip(tin, tout)], rank))
  return min(flops["factorized"], flops["reconstructed"])


def _dense_macs(node, shape, geometry) -> int:
  """Multiply-adds of the dense layer on an input of `shape` (an
  embedding's lookup: none)."""
  if isinstance(node, nnx.Embed):
    return 0
  if isinstance(node, nnx.Conv):
    return functional.cp_conv_flops(shape, node.out_features, 1,
                                    geometry)["dense"]
  in_shape, out_shape = cj_layers.linear_features(node, "compress")
  return (math.prod(shape[:len(shape) - len(in_shape)])
          * math.prod(in_shape) * math.prod(out_shape))


def _calibrate(model, chosen, calibration, layers) -> dict:
  """{path: [(axes, L)]}: for each chosen layer whose decomposition
  whitens (module docstring), the weight axes each whitening acts on,
  flattened together, and its lower Cholesky factor; {} without
  calibration. `layers`: {path: the layer of `model` there}."""
  if calibration is None:
    return {}
  wanted = {path: layers[path] for path, node, kind in chosen
            if _whitened_axes(node, kind)}
  if not wanted:
    return {}
  covariances = cj_calibration.input_covariances(model, wanted, calibration)
  found = {}
  for path, node, kind in chosen:
    if path in wanted:
      groups, covariance = _whitened_axes(node, kind), covariances[path]
      found[path] = [(axes, cj_calibration.whitening(
          covariance if len(groups) == 1 else cj_calibration.mode_covariance(
              covariance, _whitened_shape(node, kind)[:-1], axes[0])))
          for axes in groups]
  return found


def _whitened_axes(node, kind: str) -> tuple[tuple[int, ...], ...]:
  """The axes of `_whitened_shape`'s weight a calibrated decomposition
  whitens, as groups flattened together: a conv's input channels; a dense
  layer's input axes all together for "svd" and a single input axis, or
  each alone (a LinearGeneral's, for "tucker"); each input mode of a
  TT-matrix alone; none for an embedding."""
  if isinstance(node, nnx.Embed):
    return ()
  if isinstance(node, nnx.Conv):
    return ((node.kernel.ndim - 2,),)
  if kind == "tt":
    return tuple((k,) for k in range(len(_whitened_shape(node, kind)) - 1))
  in_shape = cj_layers.linear_features(node, "compress")[0]
  if kind == "svd" or len(in_shape) == 1:
    return (tuple(range(len(in_shape))),)
  return tuple((k,) for k in range(len(in_shape)))


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
  kinds = {glob.escape(layer["path"]): layer["factorization"]
           for layer in saved["layers"]}
  small = nnx.eval_shape(lambda: compress(
      model, factorization=kinds, include=tuple(kinds), ranks=ranks,
      init="random")[0])
  with ocp.StandardCheckpointer() as checkpointer:
    state = checkpointer.restore(directory / "state", _saved_state(small))
  nnx.update(small, state)
  return small


def _saved_state(model: nnx.Module) -> nnx.State:
  """What `save` keeps: every variable but random-stream state."""
  return nnx.state(model, nnx.Not(nnx.RngState))


# --- Choosing ranks ----------------------------------------------------------


def allocate(model: nnx.Module, budget: float | int = 0.1,
             factorization: str | Mapping[Filter, str] = "tucker", *,
             include: Sequence[Filter] | None = None,
             exclude: Sequence[Filter] = (), allocation: str = "global",
             calibration: Iterable | None = None, rank_multiple: int = 1,
             budget_of: str = "params", inputs=None) -> dict:
  """{path: rank} for the layers `compress` would replace: the budget
  shared out by `allocation` (module docstring), from the layers' spectra
  alone (no decomposition; whitened by `calibration`'s statistics if
  given). Raises ValueError as `compress` does."""
  chosen, _ = _choose(model, factorization, include, exclude)
  model, chosen = _with_linears(model, chosen, weights=True)
  probe = _Probe(model, chosen, calibration, "decomposed", budget_of, inputs)
  return _allocate(chosen, budget, allocation, probe, rank_multiple)


def _allocate(chosen: list[tuple[str, nnx.Module, str]], budget,
              allocation: str, probe: _Probe, rank_multiple: int) -> dict:
  """`allocate` for the (path, layer, factorization) triples `_choose`
  gave, each layer's weight whitened as the probe's calibration says, the
  cost weights or (budget_of "macs") multiply-adds."""
  _check_choice(allocation, ALLOCATIONS, "allocation")
  if isinstance(rank_multiple, bool) or not isinstance(
      _plain(rank_multiple), int) or rank_multiple < 1:
    raise ValueError(f"compress: rank_multiple must be an int >= 1, got "
                     f"{rank_multiple!r}")
  macs = probe.budget_of == "macs"
  dense = {path: probe.dense_macs(path, node) if macs else _dense_params(node)
           for path, node, _ in chosen}
  total = sum(dense.values())
  if not total:
    raise ValueError(
        f"compress: the layers chosen, {list(dense)}, do no multiply-adds "
        "(embedding lookups); give budget_of='params' or choose others")
  target = _target(budget, total, "multiply-adds" if macs else "weights")
  options = []
  for path, node, kind in chosen:
    weight = _whiten(_whitened_weight(node, kind),
                     probe.whitenings.get(path, ())).reshape(
                         np.shape(_weight(node)))
    candidates = _options(node, kind, weight, rank_multiple)
    allowed = [o for o in candidates if all(
        r % rank_multiple == 0 or r == whole
        for r, whole in zip(_components(o.rank), o.whole))]
    if not allowed:
      raise ValueError(
          f"compress: the {type(node).__name__} at {path!r} has no "
          f"{kind!r} rank that is a multiple of rank_multiple "
          f"{rank_multiple} (its ranks go up to {candidates[-1].rank}); "
          "give a smaller rank_multiple or exclude it")
    if macs:  # the cost is multiply-adds: those no other option beats
      allowed = _front([dataclasses.replace(
          o, params=probe.macs(path, node, kind, o.rank)) for o in allowed])
    # no rank that costs more than the dense layer is worth it (an
    # embedding's lookup costs no multiply-adds: every rank costs more)
    cheaper = [o for o in allowed if o.params <= dense[path]]
    options.append(cheaper or (allowed if dense[path] == 0 else allowed[:1]))
  if allocation == "uniform":
    picks = [_largest_within(o, target * dense[path] / total)
             for o, (path, _, _) in zip(options, chosen)]
  else:
    picks = _share(options, target, [path for path, _, _ in chosen],
                   "multiply-adds" if macs else "weights")
  return {path: option.rank for (path, _, _), option in zip(chosen, picks)}


def _front(options: list["_Option"]) -> list["_Option"]:
  """The options no other beats in both cost (`params`) and error, by
  cost."""
  front, best = [], math.inf
  for option in sorted(options, key=lambda o: (o.params, o.error2)):
    if option.error2 < best:
      best = option.error2
      front.append(option)
  return front


def _components(rank) -> tuple:
  return tuple(rank) if isinstance(rank, tuple) else (rank,)


def _whitened_shape(node, kind: str) -> tuple[int, ...]:
  """The shape a dense layer's weight is whitened in: its input axes then
  its outputs flattened; for a TT-matrix ("tt"), the input as the
  TT-matrix's input modes (`tt_shapes`), each whitened by its own
  covariance, so the whitening maps back core by core."""
  in_shape, out_shape = cj_layers.linear_features(node, "compress")
  if kind == "tt":
    in_shape = tt_shapes(math.prod(in_shape), math.prod(out_shape))[0]
  return (*in_shape, math.prod(out_shape))


def _whitened_weight(node, kind: str) -> np.ndarray:
  """`node`'s weight (`_weight`) in float64, a dense layer's in
  `_whitened_shape`."""
  weight = np.asarray(_weight(node), np.float64)
  if isinstance(node, (nnx.Conv, nnx.Embed)):
    return weight
  return weight.reshape(_whitened_shape(node, kind))


def _whiten(weight: np.ndarray, whitenings) -> np.ndarray:
  """`weight` with each whitening (axes, L) applied: L^T on those axes
  flattened together."""
  for axes, lower in whitenings:
    weight = _along(weight, axes, lower.T)
  return weight


def _along(weight: np.ndarray, axes: tuple[int, ...],
           matrix: np.ndarray) -> np.ndarray:
  """A square `matrix` times `weight`'s unfolding on `axes` (flattened
  together, in order), folded back."""
  rest = [a for a in range(weight.ndim) if a not in axes]
  moved = np.transpose(weight, list(axes) + rest)
  product = (matrix @ moved.reshape(matrix.shape[1], -1)).reshape(moved.shape)
  return np.transpose(product, np.argsort(list(axes) + rest))



@dataclasses.dataclass(frozen=True)
class _Option:
  rank: int | tuple
  params: int
  error2: float  # squared relative reconstruction error (estimated)
  # per rank component, the rank that keeps its mode whole (rank_multiple
  # allows it whatever it is); 0: none (CP)
  whole: tuple[int, ...] = (0,)


def _options(node: nnx.Module, factorization: str, weight: np.ndarray,
             rank_multiple: int = 1) -> list[_Option]:
  """A layer's candidate ranks, smallest first, each with its weights and
  estimated squared relative error (from the spectra of `weight`, the
  layer's weight or its whitened weight; module docstring). The caller
  keeps those of `rank_multiple`; a Tucker search over every rank
  combination keeps only those before it prunes."""
  norm2 = float(np.sum(weight**2)) or 1.0
  if factorization == "tt":
    return _tt_options(_tt_modes(node, weight), norm2)
  if isinstance(node, (nnx.Linear, nnx.LinearGeneral, nnx.Embed)):
    in_shape, out_shape = ((node.num_embeddings,), (node.features,)) if (
        isinstance(node, nnx.Embed)) else cj_layers.linear_features(
            node, "compress")
    n_in, n_out = math.prod(in_shape), math.prod(out_shape)
    if factorization == "tucker" and len(in_shape + out_shape) > 2:
      return _tucker_options(weight, range(weight.ndim), norm2,
                             every_rank=True, rank_multiple=rank_multiple)
    matrix = weight.reshape(n_in, n_out)
    _, s2 = _left_spectrum(matrix if n_in <= n_out else matrix.T)
    rest = norm2 - np.cumsum(s2)
    core = 0 if factorization == "svd" else 1  # Tucker's R x R core
    return [_Option(r if factorization == "svd" else (r, r),
                    r * (n_in + n_out) + core * r * r,
                    max(rest[r - 1], 0.0) / norm2,
                    (len(s2),) * (1 if factorization == "svd" else 2))
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
                    every_rank: bool = False,
                    rank_multiple: int = 1) -> list[_Option]:
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
    allowed = np.all((ranks % rank_multiple == 0)
                     | (ranks == np.asarray(kept.shape)), axis=1)
    params = whole * np.prod(ranks, axis=1) + ranks @ np.asarray(sizes)
    error2 = np.maximum(norm2 - kept.reshape(-1), 0.0) / norm2
    options, best = [], math.inf
    for i in np.lexsort((error2, params)):  # by weights, then error
      if allowed[i] and error2[i] < best:
        best = error2[i]
        options.append(_Option(tuple(int(r) for r in ranks[i]),
                               int(params[i]), float(error2[i]),
                               tuple(kept.shape)))
    return options
  options = {}
  for scale in np.linspace(0, 1, 4 * max(sizes) + 1):
    rank = tuple(max(1, min(kept.shape[i], round(scale * size)))
                 for i, size in enumerate(sizes))
    if rank not in options:
      options[rank] = _Option(
          rank, whole * math.prod(rank) + sum(
              size * r for size, r in zip(sizes, rank)),
          max(norm2 - float(kept[tuple(r - 1 for r in rank)]), 0.0) / norm2,
          tuple(kept.shape))
  return sorted(options.values(), key=lambda o: o.params)


def _tt_modes(node, weight: np.ndarray) -> np.ndarray:
  """`weight` as the tensor its tensor train runs over: a conv's kernel as
  (Cin, *kernel_size, Cout); a dense layer's matrix as the TT-matrix's
  merged modes (in_k * out_k for each k, `tt_shapes`)."""
  if isinstance(node, nnx.Conv):
    d = weight.ndim
    return np.transpose(weight, (d - 2, *range(d - 2), d - 1))
  in_shape, out_shape = cj_layers.linear_features(node, "compress")
  tin, tout = tt_shapes(math.prod(in_shape), math.prod(out_shape))
  d = len(tin)
  paired = np.transpose(weight.reshape(tin + tout),
                        [a for k in range(d) for a in (k, d + k)])
  return paired.reshape([i * o for i, o in zip(tin, tout)])


def _tt_options(modes: np.ndarray, norm2: float) -> list[_Option]:
  """Every uniform TT rank R of a train over `modes`' axes (each bond's
  rank min(R, what it can hold)), with its weights and, as its error, the
  truncation errors of the unfoldings at those ranks summed (TT-SVD's
  bound)."""
  shape = modes.shape
  bonds = tensor.tt_max_ranks(shape)[1:-1]
  rests = []
  for k in range(len(shape) - 1):
    unfolding = modes.reshape(math.prod(shape[:k + 1]), -1)
    _, s2 = _left_spectrum(unfolding if unfolding.shape[0]
                           <= unfolding.shape[1] else unfolding.T)
    rests.append(norm2 - np.cumsum(s2))
  options = []
  for r in range(1, max(bonds, default=1) + 1):
    ranks = [min(r, bond) for bond in bonds]
    error2 = sum(max(rest[rank - 1], 0.0)
                 for rest, rank in zip(rests, ranks) if rank <= len(rest))
    options.append(_Option(r, tensor.tt_num_params(shape, (1, *ranks, 1)),
                           min(error2 / norm2, 1.0),
                           (max(bonds, default=1),)))
  return options


def _share(options: list[list[_Option]], target: float,
           paths: list[str], unit: str = "weights") -> list[_Option]:
  """One option per layer, the weights within `target`, greedily
  maximising the summed log energy kept (module docstring)."""
  at = [0] * len(options)
  used = sum(o[0].params for o in options)
  if used > target:
    raise ValueError(
        f"compress: a budget of {target:.0f} {unit} is below the {used} "
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


def _check_ranks_within(chosen, ranks: dict, budget, implementation: str,
                        probe: "_Probe") -> None:
  """Refuse `ranks` that keep more weights (or multiply-adds, as the
  probe's budget counts) than `budget`, before any decomposition (the
  layers' shapes alone, by `nnx.eval_shape`)."""
  macs = probe.budget_of == "macs"
  unit = "multiply-adds" if macs else "weights"
  total = sum(probe.dense_macs(path, node) if macs else _dense_params(node)
              for path, node, _ in chosen)
  target = _target(budget, total, unit)
  kept = 0
  for path, node, kind in chosen:
    layer = nnx.eval_shape(lambda n=node, p=path, k=kind: _replace(
        n, k, ranks[p], "random", implementation, None, nnx.Rngs(0), p))
    kept += (probe.layer_macs(path, layer) if macs else
             cj_layers.count_params(layer) - _bias_params(layer))
  if kept > target:
    raise ValueError(
        f"compress: the ranks given keep {kept} of the {total} {unit}, "
        f"more than budget {budget!r} allows ({target:.0f}); give budget="
        "None to keep these ranks, or smaller ranks")


def _target(budget, total: int, unit: str = "weights") -> float:
  """The weights (or multiply-adds, `unit`) `budget` keeps of `total`."""
  budget = _plain(budget)
  check_budget(budget)
  if isinstance(budget, float):
    return budget * total
  if budget > total:
    raise ValueError(
        f"compress: budget {budget} {unit} is not in 1..{total}, the "
        f"{unit} of the layers it replaces")
  return float(budget)


# --- Replacing layers --------------------------------------------------------


def _replace(node, factorization, rank, init, implementation, key, rngs,
             path, whitenings=()) -> nnx.Module:
  """The factorized layer that takes `node`'s place; with `whitenings`
  ((axes, L) pairs, `_calibrate`), decomposed from the whitened weight and
  its input side mapped back (module docstring)."""
  if whitenings and init == "decomposed":
    source = nnx.clone(node)
    weight = _whiten(_whitened_weight(node, factorization), whitenings)
    source.kernel[...] = jnp.asarray(weight.reshape(node.kernel.shape),
                                     node.kernel.dtype)
    if isinstance(node, nnx.Conv):
      source.mask = None  # the weight whitened is the masked one
    layer = _replace(source, factorization, rank, init, implementation, key,
                     rngs, path)
    _unwhiten(layer, whitenings)
    return layer
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
    elif factorization == "tt":
      tin, tout = tt_shapes(math.prod(in_shape), math.prod(out_shape))
      cls, kwargs = cj_layers.TTDense, dict(in_shape=tin, out_shape=tout,
                                            rank=rank)
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
  cls = {"cp": cj_layers.CPConv, "tucker": cj_layers.TuckerConv,
         "tt": cj_layers.TTConv}[factorization]
  if init == "random":
    return cls(**cj_layers.from_conv_kwargs(node, where), rank=rank,
               implementation=implementation, rngs=rngs)
  if factorization == "cp":
    return cls.from_conv(node, rank, key=key, implementation=implementation)
  return cls.from_conv(node, rank, implementation=implementation)


def _unwhiten(layer, whitenings) -> None:
  """Map a layer decomposed from a whitened weight back: its input-side
  factor times L^{-T} for each whitening (axes, L) (`_whitened_axes` says
  which factor that is). The result takes the plain decomposition's form:
  a LowRankDense's two factors are split afresh, each side taking the
  square root of the product's singular values (`_balance`); a Tucker
  layer's factor is made orthonormal again, the core taking the rest
  (`_orthonormalize`); a TTDense's cores left-orthonormal again
  (`_left_orthonormalize`)."""
  for axes, lower in whitenings:
    back = np.linalg.inv(lower).T
    if isinstance(layer, cj_layers.LowRankDense):
      layer.left[...] = jnp.asarray(
          back @ np.asarray(layer.left[...], np.float64), layer.left.dtype)
      _balance(layer)
      continue
    if isinstance(layer, (cj_layers.TuckerDense, cj_layers.TuckerConv)):
      dense = isinstance(layer, cj_layers.TuckerDense)
      param = layer.factors[axes[0]] if dense else layer.in_factor
      _orthonormalize(layer, param, back,
                      axes[0] if dense else layer.modes[-2])
      continue
    if isinstance(layer, cj_layers.TTDense):
      param = layer.cores[axes[0]]  # (r_k, in_k, out_k, r_k+1)
      param[...] = jnp.asarray(np.einsum(
          "ab,rbos->raos", back, np.asarray(param[...], np.float64)),
          param[...].dtype)
      continue
    if isinstance(layer, cj_layers.TTConv):
      param = layer.cores[0]  # (1, Cin, r_1)
      param[...] = jnp.asarray(np.einsum(
          "ab,xbr->xar", back, np.asarray(param[...], np.float64)),
          param[...].dtype)
      continue
    param = layer.in_factor  # CPConv: (Cin, R)
    param[...] = jnp.asarray(back @ np.asarray(param[...], np.float64),
                             param[...].dtype)
  if isinstance(layer, cj_layers.TTDense):  # every mode mapped back
    _left_orthonormalize(layer.cores)


def _balance(layer: "cj_layers.LowRankDense") -> None:
  """Split `layer`'s product left @ right afresh as U S^(1/2), S^(1/2) V^T
  (its SVD, through the QR factors of each side: no dense matrix formed).
  Unwhitened, the input side holds L^{-T} and the other side most of the
  scale, and such a split fine-tunes worse
  (experiments/compress_t3f_mnist/README.md)."""
  left = np.asarray(layer.left[...], np.float64)
  right = np.asarray(layer.right[...], np.float64)
  q_left, r_left = np.linalg.qr(left)
  q_right, r_right = np.linalg.qr(right.T)
  u, s, vt = np.linalg.svd(r_left @ r_right.T)
  root = np.sqrt(s)
  layer.left[...] = jnp.asarray(q_left @ (u * root), layer.left.dtype)
  layer.right[...] = jnp.asarray((root[:, None] * vt) @ q_right.T,
                                 layer.right.dtype)


def _left_orthonormalize(cores) -> None:
  """Make a tensor train's cores (r_k, ..., r_k+1) left-orthonormal, as
  TT-SVD leaves them, by QR from the first core on, each R carried into
  the next core: the same tensor, its scale in the last core."""
  carry = None
  for k, param in enumerate(cores):
    core = np.asarray(param[...], np.float64)
    if carry is not None:
      core = np.tensordot(carry, core, axes=(1, 0))
    if k < len(cores) - 1:
      q, carry = np.linalg.qr(core.reshape(-1, core.shape[-1]))
      core = q.reshape(core.shape[:-1] + (q.shape[1],))
    param[...] = jnp.asarray(core, param[...].dtype)


def _orthonormalize(layer, param, back: np.ndarray, axis: int) -> None:
  """Set a Tucker layer's factor `param` to the orthonormal Q of
  back @ factor = Q R and multiply its `core` along `axis` by R: the
  same weight, in the form a plain Tucker decomposition has."""
  q, r = np.linalg.qr(back @ np.asarray(param[...], np.float64))
  core = np.moveaxis(np.asarray(layer.core[...], np.float64), axis, 0)
  core = np.moveaxis(np.tensordot(r, core, axes=(1, 0)), 0, axis)
  param[...] = jnp.asarray(q, param[...].dtype)
  layer.core[...] = jnp.asarray(core, layer.core[...].dtype)


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
  if isinstance(layer, (cj_layers.TuckerDense, cj_layers.LowRankDense,
                        cj_layers.TTDense)):
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
  if isinstance(node, nnx.Einsum):
    return f"Einsum({node.einsum_str!r}, {tuple(node.kernel.shape)})"
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
