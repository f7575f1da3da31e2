"""Argument checks the factorized dense layers share. Private to
`cpac_jax.layers`."""


def shape(value, what: str, name: str) -> tuple[int, ...]:
  """A tensorized shape: a positive int or a tuple of them."""
  shape = (value,) if isinstance(value, int) else tuple(value)
  if not shape or not all(isinstance(s, int) and s >= 1 for s in shape):
    raise ValueError(
        f"{name}: {what} {value!r} must be a positive int or a tuple of them")
  return shape
