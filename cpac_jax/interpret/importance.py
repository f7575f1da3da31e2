"""TTL's claim: gradients with respect to the factor matrices show which
input features matter."""

import functools
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from cpac_jax import layers, tensor
from cpac_jax.compression import set_at

__all__ = ["DEFAULT_METHOD", "METHODS", "factor_gradients",
           "importance_from_gradients", "importance_map",
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


# The default, by evidence (experiments/interpret/importance_validation.md):
# of the methods computed on training examples, permutation agrees best
# with permutation importance on held-out data, the ground truth, on every
# mode of MNIST and Fashion-MNIST, and recovers every planted feature.
METHODS = ("permutation", "occlusion", "contribution", "weight", "gradient")
DEFAULT_METHOD = "permutation"


def tucker_factor_importance(
    model: nnx.Module,
    batches: tuple[jax.Array, jax.Array] | Iterable[tuple[jax.Array,
                                                           jax.Array]] | None,
    method: str = DEFAULT_METHOD, *, repeats: int = 1, seed: int = 0,
) -> dict[str, list[jax.Array]]:
  """Importance of each index of each mode of every `TuckerDense` in `model`.

  Index i of mode n is a slice of the layer's tensorized input (an image
  row, say) or output (a hidden unit). `method` says how it is scored:

  - "permutation" (default): the rise in mean cross-entropy over
    `batches` when the slice is shuffled across the batch's examples, the
    model fixed (the same shuffle for every index; `repeats` shuffles from
    `seed`, averaged): permutation importance, the model-agnostic measure
    of what a trained model uses. Computed on training examples, it is
    the held-out ground truth's own estimator; it agreed with that truth
    most closely on 5 of the 6 MNIST and Fashion-MNIST modes
    (experiments/interpret/importance_validation.md).
  - "occlusion": the same rise when the slice is replaced by its mean over
    the batch; deterministic, close to permutation on input features.
  - "contribution": the share of the layer's centred output energy that
    passes through the index, mean over examples of ||W_i (x_i - mean x_i)||^2
    for an input slice (W_i its weight slice), of the centred output slice
    for an output index; one pass, no loss needed.
  - "weight": the norm of the weight tensor's slice at the index, from the
    factors and core alone (never forming the weight); data-free, so blind
    to inputs that never vary (`batches` may be None).
  - "gradient": the TTL paper's reading at a fixed model: the gradients
    dL/dU_n summed over `batches`, index i scoring the norm of row i of the
    sum. Row i of U_n maps feature i into the core, and dL/dU_n[i] sums that
    feature times the signal back-propagated to the core: over many
    examples it cancels for features the labels don't depend on. At a
    minimum the summed gradient goes to zero for every feature, so on a
    converged model it ranks noise; the paper accumulates it over training
    (`cpac_jax.interpret.experiments.importance_during_training`).

  "contribution", "weight" and "gradient" are shares summing to 1 per mode;
  "occlusion" and "permutation" are rises in mean loss (nats), near 0, and
  possibly a little below it, for a slice the model ignores.

  Args:
    model: a model holding TuckerDense layers (e.g. `models.TTLMLP`).
    batches: one (inputs, integer labels) pair, or an iterable of them, as
      the model takes them (normalised); None for "weight".
    method: one of `METHODS`.
    repeats: shuffles per batch for "permutation".
    seed: seeds the shuffles of "permutation".

  Returns:
    {layer path: [importance (I_n,) for each mode of in_shape + out_shape]}.
  """
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  if not isinstance(repeats, int) or repeats < 1:
    raise ValueError(f"repeats must be a positive int, got {repeats!r}")
  found = tucker_layers(model)
  if not found:
    raise ValueError(f"{type(model).__name__} holds no TuckerDense layer")
  if method == "weight":
    return {path: [v / jnp.sum(v) for v in _slice_norms(layer)]
            for path, layer in found.items()}
  if batches is None:
    raise ValueError(f"method {method!r} needs batches of (inputs, labels)")
  batches = list(_batches(batches))
  if not batches:
    raise ValueError("no batches: give at least one (inputs, labels) pair")
  if method == "gradient":
    return _gradient_importance(model, batches)
  if method == "contribution":
    return _contribution(model, batches)
  return _loss_rise(model, batches, method, repeats, seed)


def _gradient_importance(model, batches):
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  pick = factor_gradients(model)

  @jax.jit
  def gradients(params, x, y):
    def loss(params):
      logits = nnx.merge(graphdef, params, rest, copy=True)(x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return pick(jax.grad(loss)(params))

  total = None
  for x, y in batches:
    grads = gradients(params, x, y)
    total = grads if total is None else jax.tree.map(jnp.add, total, grads)
  return importance_from_gradients(model, total)


def _slice_norms(layer: layers.TuckerDense) -> list[jax.Array]:
  """||W[.., i, ..]||_F along each mode n of the weight W = core x_m U_m:
  U_n[i] S_n U_n[i]^T with S_n = G_(n) (G x_{m != n} U_m^T U_m)_(n)^T, so
  only r x r Gram matrices are formed."""
  core = layer.core[...]
  factors = [f[...] for f in layer.factors]
  grams = [f.T @ f for f in factors]
  norms = []
  for n, factor in enumerate(factors):
    weighted = core
    for m, gram in enumerate(grams):
      if m != n:
        weighted = tensor.mode_dot(weighted, gram, m)
    s = tensor.unfold(core, n) @ tensor.unfold(weighted, n).T
    norms.append(jnp.sqrt(jnp.maximum(
        jnp.einsum("ir,rs,is->i", factor, s, factor), 0.0)))
  return norms


def _contribution(model, batches):
  """Shares of each layer's centred output energy by index of each mode."""
  graphdef, state = nnx.split(model)
  paths = list(tucker_layers(model))

  @jax.jit
  def layer_inputs(state, x):
    net = nnx.merge(graphdef, state, copy=True)
    seen = {}
    for path, layer in tucker_layers(net).items():
      def record(z, path=path, layer=layer):
        seen[path] = z
        return layer(z)
      set_at(net, path, record)
    net(x)
    return [seen[path] for path in paths]

  @jax.jit
  def energies(layer_state, z):
    layer = nnx.merge(*layer_state)
    shape = layer.in_shape + layer.out_shape
    z = jnp.reshape(z, (-1,) + layer.in_shape)
    z = z - jnp.mean(z, axis=0, keepdims=True)
    weight = layer.weight_tensor()
    modes = len(layer.in_shape)
    result = []
    for n in range(modes):  # input slice i alone through the weight
      zn = jnp.moveaxis(z, 1 + n, 1).reshape(z.shape[0], shape[n], -1)
      wn = jnp.moveaxis(weight, n, 0).reshape(shape[n], zn.shape[2], -1)
      y = jnp.einsum("nir,iro->nio", zn, wn)
      result.append(jnp.sum(y * y, axis=(0, 2)))
    y = jnp.tensordot(z, weight, modes)  # (N, *out_shape), centred
    for k in range(len(layer.out_shape)):
      result.append(jnp.sum(jnp.moveaxis(y * y, 1 + k, 0).reshape(
          layer.out_shape[k], -1), axis=1))
    return result

  found = tucker_layers(model)
  total = None
  for x, _ in batches:
    inputs = layer_inputs(state, x)
    sums = [energies(nnx.split(found[path]), z)
            for path, z in zip(paths, inputs)]
    total = sums if total is None else jax.tree.map(jnp.add, total, sums)
  return {path: [v / jnp.sum(v) for v in modes]
          for path, modes in zip(paths, total)}


def _perturb(z, shape, mode, index, replacement):
  """`z` with index `index` of `mode` of its tensorized form (N, *shape)
  replaced by `replacement(tensorized z)`."""
  t = jnp.reshape(z, (z.shape[0],) + tuple(shape))
  mask = jnp.arange(shape[mode]) == index
  mask = jnp.reshape(mask, (1,) * (1 + mode) + (-1,)
                     + (1,) * (len(shape) - mode - 1))
  return jnp.reshape(jnp.where(mask, replacement(t), t), z.shape)


def _loss_rise(model, batches, method, repeats, seed):
  """Per index, the mean rise in loss over `batches` when that slice is
  occluded by its batch mean or shuffled across the batch."""
  graphdef, state = nnx.split(model)
  found = tucker_layers(model)

  def loss(net, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(net(x), y).mean()

  @functools.partial(jax.jit, static_argnums=(3, 4))
  def rises(state, x, y, path, mode, key):
    clean = loss(nnx.merge(graphdef, state, copy=True), x, y)
    order = jax.random.permutation(key, x.shape[0])
    replacement = ((lambda t: jnp.mean(t, axis=0, keepdims=True))
                   if method == "occlusion" else (lambda t: t[order]))

    def perturbed(index):
      net = nnx.merge(graphdef, state, copy=True)
      layer = tucker_layers(net)[path]
      modes = len(layer.in_shape)
      if mode < modes:
        call = lambda z: layer(_perturb(z, layer.in_shape, mode, index,
                                        replacement))
      else:
        call = lambda z: _perturb(layer(z), layer.out_shape, mode - modes,
                                  index, replacement)
      set_at(net, path, call)
      return loss(net, x, y) - clean

    size = (layer := found[path]).in_shape + layer.out_shape
    return jax.lax.map(perturbed, jnp.arange(size[mode]))

  result = {}
  key = jax.random.key(seed)
  count = sum(len(y) for _, y in batches)
  for path, layer in found.items():
    modes = []
    for mode in range(len(layer.in_shape) + len(layer.out_shape)):
      total = 0.0
      for b, (x, y) in enumerate(batches):
        draws = repeats if method == "permutation" else 1
        for r in range(draws):
          total += rises(state, x, y, path, mode,
                         jax.random.fold_in(key, b * draws + r)
                         ) * (len(y) / count / draws)
      modes.append(total)
    result[path] = modes
  return result


def importance_map(importance: Sequence[jax.Array]) -> jax.Array:
  """The input-space map the first two modes' importances imply: the outer
  product rows x columns, (I_0, I_1), normalised to sum to 1."""
  grid = jnp.outer(importance[0], importance[1])
  return grid / jnp.sum(grid)
