"""cpac_jax's copy of the official CP init against TensorLy 0.4.0 itself.

For seeds 0-9 and CP ranks 1-12, draws the two official kernels as
`cpac_jax.models.official_init.kernels` does and decomposes each with both
`official_init.parafac` and TensorLy 0.4.0's `parafac`, their fill columns
drawn from the same generator in the same order; writes, per rank, the
largest difference between the two reconstructed kernels and between the
factors (columns matched up to sign), and how degenerate the starts are:
the summed norms of the rank-1 components over the kernel's norm (1 for an
orthogonal fit, large when components cancel), for both, and where
TensorLy raises (a singular system) instead of decomposing. With
experiments/cpac_mnist/results.csv it also gives, per rank, the Spearman
correlation over seeds between that ratio (both convs summed) and the
final test accuracy.

TensorLy 0.4.0 (the release the official code names) is not a dependency
of cpac_jax: install it apart and point at it,

  pip install --target=/tmp/tensorly040 --no-deps tensorly==0.4.0
  pip install --target=/tmp/tensorly043 --no-deps tensorly==0.4.3
  python scripts/check_official_parafac.py --tensorly_path=/tmp/tensorly040 \
      --also=/tmp/tensorly043

Writes experiments/cpac_mnist/official_parafac.json.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "experiments" / "cpac_mnist" / "official_parafac.json"
SHAPES = ((8, 3, 3, 1), (8, 3, 3, 8))  # conv1, conv2 as (F, kh, kw, Cin)
SEEDS, RANKS = range(10), range(1, 13)


def _tensor(factors) -> np.ndarray:
  return np.einsum("ir,jr,kr,lr->ijkl", *factors)


def _degeneracy(factors, kernel) -> float:
  norms = np.prod([np.linalg.norm(f, axis=0) for f in factors], axis=0)
  return float(norms.sum() / np.linalg.norm(kernel))


def _factor_gap(ours, theirs) -> float:
  """Largest entry difference, each column's sign matched per factor."""
  gap = 0.0
  for a, b in zip(ours, theirs):
    signs = np.where(np.sum(a * b, axis=0) < 0, -1.0, 1.0)
    gap = max(gap, float(np.abs(a - b * signs).max()))
  return gap


def _other_release(path: str) -> dict:
  """{version, by_rank: {rank: [conv1 outcome, conv2 outcome]}} of the
  TensorLy release in `path`, run in a child process (one TensorLy per
  process) on the official kernels: "ok" or the error it raised."""
  code = f"""
import json, sys
sys.path.insert(0, {path!r})
import numpy as np, tensorly
from tensorly.decomposition import parafac
shapes = {SHAPES!r}
rng = np.random.RandomState(48)
kernels = [rng.randn(*s) / (s[1] * s[2]) for s in shapes]
out = {{}}
for rank in {list(RANKS)!r}:
  out[rank] = []
  for kernel in kernels:
    try:
      parafac(tensorly.tensor(kernel), rank)
      out[rank].append("ok")
    except Exception as error:
      out[rank].append(f"{{type(error).__name__}}: {{error}}")
print(json.dumps({{"version": tensorly.__version__, "by_rank": out}}))
"""
  result = subprocess.run([sys.executable, "-c", code], check=True,
                          capture_output=True, text=True)
  return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--tensorly_path", required=True,
                      help="a folder holding TensorLy 0.4.0")
  parser.add_argument("--also", action="append", default=[],
                      help="a folder holding another TensorLy release: "
                      "records whether its parafac decomposes the official "
                      "(seed 48) kernels at each rank")
  args = parser.parse_args()
  others = {path: _other_release(path) for path in args.also}
  sys.path.insert(0, args.tensorly_path)
  import tensorly  # pylint: disable=g-import-not-at-top
  from tensorly.decomposition import parafac as tensorly_parafac
  if tensorly.__version__ != "0.4.0":
    sys.exit(f"{args.tensorly_path} holds TensorLy {tensorly.__version__}, "
             "want 0.4.0")
  from cpac_jax import rundir  # pylint: disable=g-import-not-at-top
  from cpac_jax.models import official_init

  accuracy = {(int(r["rank"]), int(r["seed"])): float(r["test_accuracy"])
              for r in rundir.read_results(ROOT / "experiments" / "cpac_mnist")
              if r.get("init") == "official" and r["factorization"] == "cp"}
  by_rank = []
  for rank in RANKS:
    # Per conv (conv1, conv2): the largest differences over seeds, and the
    # seeds whose kernel TensorLy could not decompose. Per seed: each
    # start's degeneracy (both convs summed), TensorLy's None where it
    # raised.
    entry = {"rank": rank, "kernel_gap": [0.0, 0.0], "factor_gap": [0.0, 0.0],
             "tensorly_raised": [[], []], "degeneracy": [],
             "tensorly_degeneracy": []}
    for seed in SEEDS:
      rng = np.random.RandomState(official_init.OFFICIAL_SEED + seed)
      kernels = [rng.randn(*s) / (s[1] * s[2]) for s in SHAPES]
      state = rng.get_state()
      ours = [official_init.parafac(k, rank, rng) for k in kernels]
      rng.set_state(state)
      theirs = []
      for kernel in kernels:
        try:
          theirs.append(tensorly_parafac(tensorly.tensor(kernel), rank,
                                         random_state=rng))
        except np.linalg.LinAlgError:
          theirs.append(None)
      entry["degeneracy"].append(
          sum(_degeneracy(f, k) for f, k in zip(ours, kernels)))
      entry["tensorly_degeneracy"].append(
          None if None in theirs else
          sum(_degeneracy(f, k) for f, k in zip(theirs, kernels)))
      for conv, (a, b) in enumerate(zip(ours, theirs)):
        if b is None:
          entry["tensorly_raised"][conv].append(seed)
          continue
        entry["kernel_gap"][conv] = max(entry["kernel_gap"][conv], float(
            np.abs(_tensor(a) - _tensor(b)).max()))
        entry["factor_gap"][conv] = max(entry["factor_gap"][conv],
                                        _factor_gap(a, b))
    finals = [accuracy.get((rank, seed)) for seed in SEEDS]
    if None not in finals:
      rho, p = stats.spearmanr(entry["degeneracy"], finals)
      entry["spearman_degeneracy_accuracy"] = [float(rho), float(p)]
    by_rank.append(entry)
  OUT.write_text(json.dumps({
      "what": __doc__.split("\n")[0],
      "tensorly": tensorly.__version__, "numpy": np.__version__,
      "seeds": list(SEEDS), "conv_shapes": SHAPES, "by_rank": by_rank,
      "other_releases": list(others.values())},
      indent=1) + "\n")
  print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
  main()
