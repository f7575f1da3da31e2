"""The `implementation` argument the factorized layers share."""

IMPLEMENTATIONS = ("auto", "factorized", "reconstructed")


def check_implementation(implementation: str, layer: str) -> str:
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(
        f"{layer}: implementation {implementation!r} is not one of "
        f"{IMPLEMENTATIONS}")
  return implementation


def choose(implementation: str, flops: dict[str, int]) -> str:
  """`implementation`, with 'auto' resolved to the path of fewer
  multiply-adds in `flops`."""
  if implementation != "auto":
    return implementation
  return min(("factorized", "reconstructed"), key=flops.get)
