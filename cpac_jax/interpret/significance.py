"""CPAC-Conv's claim: the CP factor values rank the significance of each
feature map, which guides feature selection."""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from cpac_jax import layers

__all__ = ["accuracy", "cp_feature_significance", "feature_selection"]


def cp_feature_significance(layer: layers.CPConv) -> dict[str, jax.Array]:
  """Significance of each input and output feature map of a `CPConv`.

  The kernel is a sum of rank-1 terms, K = sum_r s_0[:, r] o ... o a_in[:, r]
  o a_out[:, r]. Output map o receives K[..., o] = sum_r a_out[o, r] T_r,
  where T_r is the outer product of the other factors' r-th columns, with
  ||T_r|| = prod of their column norms. So

    significance_out[o] = sum_r |a_out[o, r]| * prod_{n != out} ||a_n[:, r]||

  bounds ||K[..., o]||_F from above (triangle inequality; equal at rank 1):
  a map whose factor row is small contributes little to every rank-1 term,
  hence little to the layer's output. Input maps likewise, from a_in's rows.

  Returns:
    {"input": (Cin,), "output": (Cout,)}.
  """
  factors = layer.factors()
  norms = [jnp.linalg.norm(f, axis=0) for f in factors]

  def score(mode):
    others = jnp.prod(jnp.stack([n for m, n in enumerate(norms) if m != mode]),
                      axis=0)
    return jnp.abs(factors[mode]) @ others

  return {"input": score(len(factors) - 2), "output": score(len(factors) - 1)}


@functools.partial(jax.jit, static_argnums=0)
def _correct(graphdef: nnx.GraphDef, state, x: jax.Array, y: jax.Array):
  logits = nnx.merge(graphdef, state)(x)
  return jnp.sum(jnp.argmax(logits, -1) == y)


def accuracy(model: nnx.Module, x: jax.Array, y: jax.Array,
             batch_size: int = 10_000) -> float:
  """The share of (x, y) that `model` classifies right, `batch_size` at a
  time (compiled once per model structure, not per call)."""
  graphdef, state = nnx.split(model)
  total = sum(int(_correct(graphdef, state, x[i:i + batch_size],
                           y[i:i + batch_size]))
              for i in range(0, len(y), batch_size))
  return total / len(y)


def feature_selection(model: nnx.Module, layer: layers.CPConv, x: jax.Array,
                      y: jax.Array, order: Sequence[int]) -> list[float]:
  """Test accuracy as the output maps of `layer` (a CPConv inside `model`)
  are removed one by one in `order`, by zeroing their rows of the output
  factor: accuracy with 0, 1, ..., len(order) maps removed. The model is
  left as it was."""
  original = layer.out_factor[...]
  accuracies = [accuracy(model, x, y)]
  try:
    for k in range(1, len(order) + 1):
      layer.out_factor[...] = original.at[jnp.asarray(order[:k])].set(0.0)
      accuracies.append(accuracy(model, x, y))
  finally:
    layer.out_factor[...] = original
  return accuracies
