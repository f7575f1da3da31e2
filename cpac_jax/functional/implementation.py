"""The `implementation` argument of the factorized layers, and `choose`,
which resolves "auto" to the cheaper path for the shapes at hand."""

__all__ = ["IMPLEMENTATIONS", "INTERMEDIATE_COST", "check_implementation",
           "choose"]

IMPLEMENTATIONS = ("auto", "factorized", "reconstructed")

# What writing (and later reading back) one element of an intermediate
# activation of the factorized path costs, in multiply-adds: a chain of thin
# products moves more memory per multiply-add than one dense op. Fit on the
# 2-core CPU to experiments/benchmarks/layers.md (cpac_jax.benchmarks.layers;
# the faster of each layer's two paths, forward+backward), with each path's
# convs priced at the lowering that runs them (`conv.lowering_saving`):
# on the 18 conv layers of the shapes it is fit to, every value from 125 to
# 200 picks the faster path for all 18; 175 is the middle. On the 18 of the
# shapes it never saw it picks 17 (the miss 1.02x). 275, the value fit
# before convs were priced by lowering, picks 17 and 16 with it (a miss of
# 1.74x).
# Of the TT-matrix plans of experiments/benchmarks/tt_plans.md, one changes
# between 275 and 175 (1024 -> 1024 at rank 4, batch 128: from the rebuilt
# weight to three groups). The benchmark's last two tables check it.
INTERMEDIATE_COST = 175


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
  reconstructed one its multiply-adds; each less what its convs save at
  the lowering they run ("PATH_saved", `conv.lowering_saving`).

  Example:
    >>> choose("auto", {"factorized": 10, "intermediates": 1,
    ...                 "reconstructed": 1000})
    'factorized'
    >>> choose("factorized", {"factorized": 10**9, "reconstructed": 1})
    'factorized'
  """
  if implementation != "auto":
    return implementation
  factorized = (flops["factorized"] - flops.get("factorized_saved", 0)
                + INTERMEDIATE_COST * flops.get("intermediates", 0))
  reconstructed = (flops["reconstructed"]
                   - flops.get("reconstructed_saved", 0))
  return "factorized" if factorized < reconstructed else "reconstructed"
