"""Benchmarks: each a module on one harness (`harness`), run as

  python -m cpac_jax.benchmarks.NAME [--repeats=N] [--render_only]

writing experiments/benchmarks/NAME.{json,md}. They use cpac_jax's public
names only, as a user's code would (tests/test_layout.py checks), and
nothing in the library imports them.
"""
