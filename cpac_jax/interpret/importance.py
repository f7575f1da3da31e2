"""TTL's claim: gradients with respect to the factor matrices show which
input features matter."""

from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from cpac_jax import layers

__all__ = ["factor_gradients", "importance_from_gradients", "importance_map",
           "tucker_factor_importance", "tucker_layers"]


def tucker_layers(model: nnx.Module) -> dict[str, layers.TuckerDense]:
  """The `TuckerDense` layers of `model`, by path ("a/b/0")."""
  return {"/".join(map(str, path)): node
          for path, node in nnx.iter_graph(model)
          if isinstance(node, layers.TuckerDense)}


def _at(state, path: str):
  node = state
  for key in path.split("/"):
    node = node[int(key) if key.isdigit() else key]
  return node


def factor_gradients(model: nnx.Module):
  """(grads of `model`'s parameters) -> [[dL/dU_n for each mode] for each
  TuckerDense layer, in `tucker_layers` order]."""
  paths = {path: len(layer.factors)
           for path, layer in tucker_layers(model).items()}

  def pick(grads):
    return [[_at(grads, path)["factors"][i][...] for i in range(modes)]
            for path, modes in paths.items()]

  return pick


def importance_from_gradients(model: nnx.Module, total
                              ) -> dict[str, list[jax.Array]]:
  """Importances from factor gradients `total` (as `factor_gradients`
  picks them, summed over batches or steps): index i of mode n scores the
  norm of row i of dL/dU_n, normalised to sum to 1 per mode."""
  if total is None:
    raise ValueError("no factor gradients: no batches, or no training steps")
  result = {}
  for path, modes in zip(tucker_layers(model), total, strict=True):
    norms = [jnp.linalg.norm(g, axis=1) for g in modes]
    result[path] = [v / jnp.sum(v) for v in norms]
  return result


def _batches(batches):
  if isinstance(batches, tuple) and len(batches) == 2 and hasattr(
      batches[0], "shape"):
    return [batches]
  return batches


def tucker_factor_importance(
    model: nnx.Module,
    batches: tuple[jax.Array, jax.Array] | Iterable[tuple[jax.Array,
                                                           jax.Array]],
) -> dict[str, list[jax.Array]]:
  """Importance of each index of each mode of every `TuckerDense` in `model`.

  As the TTL paper proposes, from the gradients of the loss with respect to
  the factor matrices: the gradients dL/dU_n are summed over `batches`, and
  index i of mode n scores the norm of row i of that sum, normalised to sum
  to 1 per mode. Row i of U_n maps feature i of mode n (an image row, say)
  into the core, and dL/dU_n[i] = sum over examples of that feature times
  the signal back-propagated to the core: summed over many examples, it
  cancels for features the labels don't depend on and adds up for those
  they do. A feature that never varies from 0 (MNIST's empty border, in
  [0, 1] pixels) gets exactly 0. At a fixed model the sum is informative
  while the model still learns; `cpac_jax.interpret.experiments.
  importance_during_training` accumulates it over training, as the paper
  does, which is what ranks planted features reliably
  (tests/test_interpret.py).

  Args:
    model: a model holding TuckerDense layers (e.g. `models.TTLMLP`).
    batches: one (inputs, integer labels) pair, or an iterable of them, as
      the model takes them (normalised).

  Returns:
    {layer path: [importance (I_n,) for each mode of in_shape + out_shape]}.
  """
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  pick = factor_gradients(model)

  @jax.jit
  def gradients(params, x, y):
    def loss(params):
      logits = nnx.merge(graphdef, params, rest, copy=True)(x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return pick(jax.grad(loss)(params))

  total = None
  for x, y in _batches(batches):
    grads = gradients(params, x, y)
    total = grads if total is None else jax.tree.map(jnp.add, total, grads)
  return importance_from_gradients(model, total)


def importance_map(importance: Sequence[jax.Array]) -> jax.Array:
  """The input-space map the first two modes' importances imply: the outer
  product rows x columns, (I_0, I_1), normalised to sum to 1."""
  grid = jnp.outer(importance[0], importance[1])
  return grid / jnp.sum(grid)
