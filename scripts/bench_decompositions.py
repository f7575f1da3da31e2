"""cp_als and tucker against TensorLy on the same tensors: time, memory,
error, measured in one run.

  python scripts/bench_decompositions.py [--repeats=3]

Tensors: a random 512x512x3x3 conv kernel, CP at rank 64 (50 ALS sweeps,
both libraries, SVD init), and a random 784x300 weight tensorized to
(28, 28, 300), Tucker (HOOI) at ranks (5, 5, 10). Ours: the median wall
time of `repeats` jitted calls after compilation, and the scratch memory
XLA's compiled program reserves (`memory_analysis().temp_size_in_bytes`),
in kernels. TensorLy (numpy backend): median wall time and the peak of
Python allocations during one call (tracemalloc; numpy reports its buffers
to it). Writes experiments/benchmarks/decompositions.{md,json}.
"""

import json
import platform
import statistics
import time
import tracemalloc
from pathlib import Path

import jax
import numpy as np
from absl import app, flags

from cpac_jax import tensor

_REPEATS = flags.DEFINE_integer("repeats", 3, "timed calls per method")
_OUT = flags.DEFINE_string("out", "experiments/benchmarks",
                           "folder for decompositions.{md,json}")


def _median_seconds(fn, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _relative_error(x, y):
  return float(np.linalg.norm(np.asarray(x) - np.asarray(y))
               / np.linalg.norm(np.asarray(x)))


def _ours(name, fn, x, rebuild, repeats):
  compiled = jax.jit(fn).lower(x).compile()
  result = compiled(x)
  scratch = compiled.memory_analysis()
  return {"case": name, "library": "cpac_jax",
          "seconds": _median_seconds(lambda: compiled(x), repeats),
          "memory_kernels": (scratch.temp_size_in_bytes / x.nbytes
                             if scratch is not None else None),
          "memory_kind": "XLA scratch",
          "relative_error": _relative_error(x, rebuild(result))}


def _tensorly(name, fn, x, rebuild, repeats):
  tracemalloc.start()
  result = fn()
  _, peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  return {"case": name, "library": "tensorly",
          "seconds": _median_seconds(fn, repeats),
          "memory_kernels": peak / x.nbytes,
          "memory_kind": "peak Python allocations",
          "relative_error": _relative_error(x, rebuild(result))}


def main(argv):
  del argv
  import tensorly
  from tensorly import decomposition

  repeats = _REPEATS.value
  kernel = jax.random.normal(jax.random.key(0), (512, 512, 3, 3))
  kernel_np = np.asarray(kernel)
  weight = jax.random.normal(jax.random.key(1), (28, 28, 300))
  weight_np = np.asarray(weight)
  cp_case = "CP rank 64 of 512x512x3x3, 50 sweeps"
  tucker_case = "Tucker (5, 5, 10) of 784x300 as (28, 28, 300)"
  rows = [
      _ours(cp_case, lambda w: tensor.cp_als(w, 64, n_iter_max=50, tol=0.0),
            kernel, tensor.cp_to_tensor, repeats),
      _tensorly(cp_case, lambda: decomposition.parafac(
          kernel_np, 64, n_iter_max=50, tol=0.0, init="svd"),
          kernel_np, tensorly.cp_to_tensor, repeats),
      _ours(tucker_case, lambda w: tensor.tucker(w, (5, 5, 10)), weight,
            tensor.tucker_to_tensor, repeats),
      _tensorly(tucker_case, lambda: decomposition.tucker(
          weight_np, (5, 5, 10), n_iter_max=100, tol=1e-8),
          weight_np, tensorly.tucker_to_tensor, repeats),
  ]
  device = f"{jax.devices()[0].device_kind} ({jax.default_backend()})"
  out = Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  meta = {"device": device, "machine": platform.machine(),
          "repeats": repeats, "jax": jax.__version__,
          "tensorly": tensorly.__version__}
  (out / "decompositions.json").write_text(
      json.dumps({"meta": meta, "rows": rows}, indent=1))
  lines = ["# CP-ALS and Tucker against TensorLy", "",
           f"`python scripts/bench_decompositions.py --repeats={repeats}` on "
           f"{device}, {platform.machine()}, jax {jax.__version__}, tensorly "
           f"{tensorly.__version__} (numpy backend). Median of {repeats} "
           "calls after compilation; memory in units of the input tensor's "
           "size (ours: XLA's compiled scratch; TensorLy: peak Python "
           "allocations during one call).", "",
           "| case | library | time (s) | memory (x input) | relative error |",
           "|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['case']} | {r['library']} | {r['seconds']:.2f} "
                 f"| {r['memory_kernels']:.1f} | {r['relative_error']:.4f} |")
  (out / "decompositions.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
