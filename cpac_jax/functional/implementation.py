"""The `implementation` argument of the factorized layers, and `choose`,
which resolves "auto" to the cheaper path for the shapes at hand."""

__all__ = ["IMPLEMENTATIONS", "INTERMEDIATE_COST", "check_implementation",
           "choose"]

IMPLEMENTATIONS = ("auto", "factorized", "reconstructed")

# What writing (and later reading back) one element of an intermediate
# activation of the factorized path costs, in multiply-adds: a chain of thin
# products moves more memory per multiply-add than one dense op. Fit on the
# 2-core CPU to the layers of three shapes; experiments/benchmarks/layers.md
# (cpac_jax.benchmarks.layers) checks it in its last two tables: it picks the
# faster path (forward+backward) for 24 of the 25 layers of those shapes
# and 22 of the 24 of three others, both on an AVX2 CPU against XLA's dense
# (the file's git history) and on the AVX-512 CPU against the fastest dense
# (the misses at rank fraction 0.5).
INTERMEDIATE_COST = 275


def check_implementation(implementation: str, layer: str) -> str:
  """`implementation`, if it is one of IMPLEMENTATIONS; else ValueError
  naming `layer`."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(
        f"{layer}: implementation {implementation!r} is not one of "
        f"{IMPLEMENTATIONS}")
  return implementation


def choose(implementation: str, flops: dict[str, int]) -> str:
  """`implementation`, with "auto" resolved to the cheaper path for a
  layer's `flops(input_shape)`: the factorized path costs its multiply-adds
  plus `INTERMEDIATE_COST` per element of its intermediates, the
  reconstructed one its multiply-adds.

  Example:
    >>> choose("auto", {"factorized": 10, "intermediates": 1,
    ...                 "reconstructed": 1000})
    'factorized'
    >>> choose("factorized", {"factorized": 10**9, "reconstructed": 1})
    'factorized'
  """
  if implementation != "auto":
    return implementation
  factorized = (flops["factorized"]
                + INTERMEDIATE_COST * flops.get("intermediates", 0))
  return ("factorized" if factorized < flops["reconstructed"]
          else "reconstructed")
