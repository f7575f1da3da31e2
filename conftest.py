"""pytest's doctest collection imports every module of cpac_jax: those that
need the peers of `pip install -e ".[bench]"` are left out where the peers
are not installed."""

import importlib.util

collect_ignore = []
if importlib.util.find_spec("torch") is None:
  collect_ignore.append("cpac_jax/benchmarks/torch_models.py")
