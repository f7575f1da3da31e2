"""What a model's layers see on data: the statistics `cj.compress` needs to
decompose a layer for its outputs on that data instead of for its weights
("data-aware", as SVD-LLM, Wang et al. 2024, whitens by the calibration
activations).

For a layer y = x W with weight W (inputs x on the rows), the error of its
outputs on the calibration inputs X is

  ||X W - X W'||_F^2 = ||L^T (W - W')||_F^2,  L L^T = X^T X,

so decomposing the whitened weight L^T W and mapping the input side back by
L^{-T} minimises the output error (for a truncated SVD: exactly, but for
the small ridge `whitening` adds). A conv's
input mode is its input channels: X^T X sums over every position, which is
exact for a 1x1 conv and the per-channel statistics of a larger one.

  covariances = input_covariances(model, {"fc": model.fc}, batches)
  lower = whitening(covariances["fc"])

Memory is bounded by the layers (one n x n matrix per layer of n inputs),
not by the data: each batch is folded in and dropped. The model runs
eagerly, batch by batch, with the chosen layers' calls recorded.
"""

import contextlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx

__all__ = ["DAMPING", "input_covariances", "input_shapes",
           "mode_covariance", "output_errors", "whitening"]

# The ridge added to a covariance before its Cholesky factor, as a fraction
# of its mean diagonal (GPTQ's 1% "percdamp"): inputs the data never
# excite (a dead ReLU's channel) would otherwise make L singular and L^{-T}
# blow up the factors on the inputs the data missed.
DAMPING = 0.01


def input_covariances(model: nnx.Module, layers: Mapping[str, nnx.Module],
                      batches: Iterable) -> dict[str, np.ndarray]:
  """{name: X^T X} over every call of each of `layers` ({name: layer})
  while `model` runs on `batches`, in float64; X holds the inputs a row
  each: a dense layer's flattened features (its input's trailing axes), a
  conv's input channels at every position. `nnx.Embed` layers get none
  (their inputs are indices).

  A batch is an array, called as model(batch), or a tuple of arguments,
  model(*batch).

  Raises:
    ValueError: no batch, a layer never called on them, or a jitted model
      (the calls must run eagerly to be recorded).
  """
  wanted = {name: layer for name, layer in layers.items()
            if not isinstance(layer, nnx.Embed)}
  sums = {}

  def record(name, layer, x, y, *args, **kwargs):
    del y, args, kwargs
    rows = np.asarray(_concrete(x), np.float64).reshape(
        -1, _input_size(layer))
    sums[name] = sums.get(name, 0.0) + rows.T @ rows

  _run(model, wanted, batches, record)
  _check_called(wanted, sums)
  return sums


def input_shapes(model: nnx.Module, layers: Mapping[str, nnx.Module],
                 batch) -> dict[str, list[tuple[int, ...]]]:
  """{name: [the shape of its input at each call]} for `layers` ({name:
  layer}) while `model` runs on one `batch` (an array, or a tuple of the
  model's arguments); an embedding's input is its indices.

  Raises:
    ValueError: a layer never called on the batch.
  """
  shapes = {}

  def record(name, layer, x, y, *args, **kwargs):
    del layer, y, args, kwargs
    shapes.setdefault(name, []).append(tuple(x.shape))

  _run(model, layers, [batch], record)
  _check_called(layers, shapes)
  return shapes


def output_errors(model: nnx.Module,
                  replacements: Mapping[str, tuple[nnx.Module, nnx.Module]],
                  batches: Iterable) -> dict[str, float]:
  """{name: ||y - y'|| / ||y - b||}: each replaced layer's output error on
  the inputs it gets while `model` (the original) runs on `batches`; y is
  the layer's output, y' its replacement's on the same input, b the bias
  both add. `replacements`: {name: (layer of `model`, its replacement)}.

  Raises:
    ValueError: as `input_covariances`.
  """
  layers = {name: old for name, (old, _) in replacements.items()}
  errors, norms = {}, {}

  def record(name, layer, x, y, *args, **kwargs):
    new = replacements[name][1](x, *args, **kwargs)
    y = np.asarray(_concrete(y), np.float64)
    bias = getattr(layer, "bias", None)
    if bias is not None:
      y = y - np.asarray(bias[...], np.float64)
      new = np.asarray(new, np.float64) - np.asarray(bias[...], np.float64)
    gap = y - np.asarray(new, np.float64)
    errors[name] = errors.get(name, 0.0) + float(np.sum(gap**2))
    norms[name] = norms.get(name, 0.0) + float(np.sum(y**2))

  _run(model, layers, batches, record)
  _check_called(layers, errors)
  return {name: math.sqrt(errors[name] / norms[name]) if norms[name]
          else 0.0 for name in errors}


def whitening(covariance: np.ndarray,
              damping: float = DAMPING) -> np.ndarray:
  """L, lower triangular, with L L^T = covariance + damping * (its mean
  diagonal) * I: the map whose transpose whitens a weight's input side."""
  covariance = np.asarray(covariance, np.float64)
  n = covariance.shape[0]
  ridge = damping * max(float(np.trace(covariance)) / n, 1e-30)
  return np.linalg.cholesky(covariance + ridge * np.eye(n))


def mode_covariance(covariance: np.ndarray, shape: Sequence[int],
                    mode: int) -> np.ndarray:
  """The covariance of one input mode: `covariance` of the flattened
  inputs, of shape `shape`, summed over the other modes' matching entries
  (x_mode x_mode^T summed over the rest of each input)."""
  d = len(shape)
  full = np.reshape(covariance, tuple(shape) * 2)
  letters = "abcdefghijklmnopqrstuvwxyz"
  left = list(letters[:d])
  right = list(left)
  right[mode] = letters[d]
  return np.einsum(f"{''.join(left)}{''.join(right)}->"
                   f"{left[mode]}{right[mode]}", full)


def _input_size(layer) -> int:
  if isinstance(layer, nnx.Conv):
    return layer.in_features
  if isinstance(layer, nnx.Linear):
    return layer.in_features
  return math.prod(_tuple(layer.in_features))


def _tuple(value) -> tuple:
  return tuple(value) if isinstance(value, Sequence) else (value,)


def _concrete(x) -> jax.Array:
  if isinstance(x, jax.core.Tracer):
    raise ValueError(
        "compress: calibration records each layer's inputs as the model "
        "runs, so the model must run eagerly; call it unjitted (no "
        "nnx.jit or jax.jit around its __call__)")
  return x


def _run(model: nnx.Module, layers: Mapping[str, nnx.Module],
         batches: Iterable, record: Callable) -> None:
  """Run `model` on `batches` with every call of `layers` passed to
  `record(name, layer, x, y, *args, **kwargs)` after it computes y."""
  seen = 0
  with _recording(layers, record):
    for batch in batches:
      seen += 1
      if isinstance(batch, tuple):
        model(*batch)
      else:
        model(batch)
  if not seen:
    raise ValueError("compress: calibration holds no batch; give an "
                     "iterable of the model's inputs (arrays, or tuples of "
                     "its arguments)")


@contextlib.contextmanager
def _recording(layers: Mapping[str, nnx.Module], record: Callable):
  """Patch the classes of `layers` so each call of one of them (by
  identity) is recorded; restored on exit, whatever happens."""
  names = {id(layer): name for name, layer in layers.items()}
  active = set()  # a subclass's patched call reaching its base's
  originals = {}
  for cls in {type(layer) for layer in layers.values()}:
    original = cls.__call__

    def call(self, x, *args, _original=original, **kwargs):
      if id(self) not in names or id(self) in active:
        return _original(self, x, *args, **kwargs)
      active.add(id(self))
      try:
        y = _original(self, x, *args, **kwargs)
      finally:
        active.discard(id(self))
      record(names[id(self)], self, x, y, *args, **kwargs)
      return y

    originals[cls] = cls.__dict__.get("__call__")
    cls.__call__ = call
  try:
    yield
  finally:
    for cls, original in originals.items():
      if original is None:
        del cls.__call__
      else:
        cls.__call__ = original


def _check_called(layers: Mapping[str, nnx.Module], found: dict) -> None:
  missing = [name for name in layers if name not in found]
  if missing:
    raise ValueError(
        f"compress: the model never called the layers at {missing} while "
        "it ran on the calibration batches; exclude them, give data that "
        "reaches them, or run the model unjitted (nnx.jit calls copies)")
