"""cp_als and tucker against TensorLy on the same tensors: time, memory,
error, measured in one run.

  python -m cpac_jax.benchmarks.decompositions [--repeats=3]

Tensors: a random 512x512x3x3 conv kernel, CP at rank 64 (50 ALS sweeps,
both libraries, SVD init), and a random 784x300 weight tensorized to
(28, 28, 300), Tucker (HOOI) at ranks (5, 5, 10). Times by the harness's
protocol (`harness.measure`). Memory: ours, the scratch XLA's compiled
program reserves (`memory_analysis().temp_size_in_bytes`); TensorLy's
(numpy backend), the peak of Python allocations during one call
(tracemalloc; numpy reports its buffers to it); both in units of the input
tensor's size. Writes experiments/benchmarks/decompositions.{md,json}.
"""

import sys
import tracemalloc

import jax
import numpy as np

import cpac_jax as cj
from cpac_jax.benchmarks import harness

NAME, REPEATS, PACKAGES = "decompositions", 3, ("tensorly",)


def _relative_error(x, y) -> float:
  return float(np.linalg.norm(np.asarray(x) - np.asarray(y))
               / np.linalg.norm(np.asarray(x)))


def _ours(case, fn, x, rebuild) -> harness.Variant:
  row = {"case": case, "library": "cpac_jax", "memory_kind": "XLA scratch"}

  def build():
    compiled = jax.jit(fn).lower(x).compile()
    scratch = compiled.memory_analysis()
    row["memory_kernels"] = (scratch.temp_size_in_bytes / x.nbytes
                             if scratch is not None else None)
    row["relative_error"] = _relative_error(x, rebuild(compiled(x)))
    return {"call": lambda: jax.block_until_ready(compiled(x))}

  return harness.Variant(row, build)


def _tensorly(case, fn, x, rebuild) -> harness.Variant:
  row = {"case": case, "library": "tensorly",
         "memory_kind": "peak Python allocations"}

  def build():
    tracemalloc.start()
    result = fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    row["memory_kernels"] = peak / x.nbytes
    row["relative_error"] = _relative_error(x, rebuild(result))
    return {"call": fn}

  return harness.Variant(row, build)


def rows(repeats: int) -> list[dict]:
  import tensorly
  from tensorly import decomposition

  kernel = jax.random.normal(jax.random.key(0), (512, 512, 3, 3))
  weight = jax.random.normal(jax.random.key(1), (28, 28, 300))
  kernel_np, weight_np = np.asarray(kernel), np.asarray(weight)
  cp_case = "CP rank 64 of 512x512x3x3, 50 sweeps"
  tucker_case = "Tucker (5, 5, 10) of 784x300 as (28, 28, 300)"
  return harness.measure([
      _ours(cp_case, lambda w: cj.tensor.cp_als(w, 64, n_iter_max=50,
                                                tol=0.0),
            kernel, cj.tensor.cp_to_tensor),
      _tensorly(cp_case, lambda: decomposition.parafac(
          kernel_np, 64, n_iter_max=50, tol=0.0, init="svd"),
          kernel_np, tensorly.cp_to_tensor),
      _ours(tucker_case, lambda w: cj.tensor.tucker(w, (5, 5, 10)), weight,
            cj.tensor.tucker_to_tensor),
      _tensorly(tucker_case, lambda: decomposition.tucker(
          weight_np, (5, 5, 10), n_iter_max=100, tol=1e-8),
          weight_np, tensorly.tucker_to_tensor),
  ], repeats)


def render(run: dict) -> str:
  """decompositions.md from a run (as decompositions.json holds it)."""
  meta = run["meta"]
  lines = ["# CP-ALS and Tucker against TensorLy", "",
           f"{harness.describe(meta)} TensorLy on its numpy backend. "
           "Memory in units of the input tensor's size (ours: "
           "XLA's compiled scratch; TensorLy: peak Python allocations during "
           "one call).", "",
           "| case | library | time (s) | memory (x input) | relative error |",
           "|---|---|---|---|---|"]
  for r in run["rows"]:
    lines.append(f"| {r['case']} | {r['library']} | "
                 f"{r['call_ms'] / 1e3:.2f} | {r['memory_kernels']:.1f} "
                 f"| {r['relative_error']:.4f} |")
  return "\n".join(lines) + "\n"


def summary(run: dict) -> str:
  """The run's headline figures, for the benchmarks' README."""
  lines = []
  for case in dict.fromkeys(r["case"] for r in run["rows"]):
    ours, theirs = (next(r for r in run["rows"] if r["case"] == case
                         and r["library"] == library)
                    for library in ("cpac_jax", "tensorly"))
    lines.append(
        f"- {case}: ours {ours['call_ms'] / theirs['call_ms']:.2f}x "
        f"TensorLy's time ({ours['call_ms'] / 1e3:.2f} against "
        f"{theirs['call_ms'] / 1e3:.2f} s), relative error "
        f"{ours['relative_error']:.4f} against {theirs['relative_error']:.4f}.")
  return "\n".join(lines)

if __name__ == "__main__":
  harness.main(sys.modules[__name__])
