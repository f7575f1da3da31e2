"""Parameter counts of a model against its dense twin: the compression
columns of a results row."""

import math

from flax import nnx

from cpac_jax import layers

__all__ = ["count_factorized", "parameter_counts"]


def count_factorized(model: nnx.Module) -> tuple[int, int]:
  """(weights of the factorized layers, weights of their dense twins):
  bias excluded, so the ratio is the papers' per-layer compression."""
  ours = dense = 0
  for _, node in nnx.iter_graph(model):
    if isinstance(node, (layers.CPConv, layers.TuckerConv, layers.TTConv)):
      dense += (math.prod(node.kernel_size) * node.in_features
                * node.out_features)
    elif isinstance(node, (layers.TuckerDense, layers.TTDense,
                           layers.LowRankDense)):
      dense += node.in_features * node.out_features
    elif isinstance(node, layers.LowRankEmbed):
      dense += node.num_embeddings * node.features
    else:
      continue
    bias = getattr(node, "bias", None)  # an embedding table has none
    bias = math.prod(bias.shape) if bias is not None else 0
    ours += layers.count_params(node) - bias
  return ours, dense


def parameter_counts(model: nnx.Module, dense_twin: nnx.Module) -> dict:
  """The parameter counts of a results row: the model's, its compression
  against `dense_twin` (the same model, factorization "dense"; abstract is
  enough), and the factorized layers' alone."""
  num_params = layers.count_params(model)
  factorized, factorized_dense = count_factorized(model)
  return {"params": num_params,
          "compression": layers.count_params(dense_twin) / num_params,
          "layer_params": factorized,
          "layer_compression": (factorized_dense / factorized
                                if factorized else 1.0)}

