"""The `implementation` argument the factorized layers share."""

IMPLEMENTATIONS = ("auto", "factorized", "reconstructed")


def check_implementation(implementation: str, layer: str) -> str:
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(
        f"{layer}: implementation {implementation!r} is not one of "
        f"{IMPLEMENTATIONS}")
  return implementation


# What a multiply-add of a depthwise pass costs against one of a matmul or
# dense conv: the passes are strided slices scaled and summed, bound by
# memory traffic where matmuls are bound by arithmetic. Fit by hand to the
# CPConv rows of experiments/benchmarks/layers.md (scripts/bench_layers.py).
DEPTHWISE_COST = 100


def choose(implementation: str, flops: dict[str, int]) -> str:
  """`implementation`, with 'auto' resolved to the cheaper path for the
  multiply-adds in `flops` (a layer's `flops()`): those of the factorized
  path's depthwise passes, `flops["depthwise"]` if any, count
  `DEPTHWISE_COST` times."""
  if implementation != "auto":
    return implementation
  factorized = (flops["factorized"]
                + (DEPTHWISE_COST - 1) * flops.get("depthwise", 0))
  return ("factorized" if factorized < flops["reconstructed"]
          else "reconstructed")
