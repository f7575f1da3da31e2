"""Wall time of a whole sweep run one model at a time against all its runs
trained together (`--vectorize`), and how far their accuracies differ.

  python scripts/bench_sweep.py [--config=configs/cpac_mnist.py:one_seed]

Runs the sweep command twice, in fresh scratch workdirs, as a user would
(start-up, compilation and the report included), then writes
experiments/benchmarks/sweep.{md,json}: the two wall times, their ratio, and
each run's test accuracy both ways. Needs the data (scripts/fetch_data.sh).
"""

import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
from absl import app, flags

from cpac_jax import rundir

_CONFIG = flags.DEFINE_string("config", "configs/cpac_mnist.py:one_seed",
                              "the sweep's config (with preset)")
_OUT = flags.DEFINE_string("out", "experiments/benchmarks",
                           "folder for sweep.{md,json}")


def _sweep(config: str, workdir: Path, *flags_) -> tuple[float, dict]:
  start = time.perf_counter()
  subprocess.run([sys.executable, "-m", "cpac_jax.sweep", f"--config={config}",
                  f"--workdir={workdir}", *flags_], check=True)
  seconds = time.perf_counter() - start
  return seconds, {row["key"]: row for row in rundir.read_results(workdir)}


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as scratch:
    vectorized, together = _sweep(_CONFIG.value, Path(scratch) / "together",
                                  "--vectorize")
    separate, apart = _sweep(_CONFIG.value, Path(scratch) / "apart")
  rows = [{"run": apart[key]["run"],
           **{f"{what}_{mode}": float(table[key][what])
              for what in ("test_accuracy", "best_test_accuracy")
              for mode, table in (("separate", apart),
                                 ("vectorized", together))}}
          for key in apart]  # in sweep order
  gap = max(abs(r[f"{w}_separate"] - r[f"{w}_vectorized"]) for r in rows
            for w in ("test_accuracy", "best_test_accuracy"))
  device = jax.devices()[0]
  result = {"config": _CONFIG.value, "runs": len(rows),
            "device": f"{device.platform} ({device.device_kind})",
            "machine": platform.machine(), "jax": jax.__version__,
            "separate_seconds": separate, "vectorized_seconds": vectorized,
            "speedup": separate / vectorized, "max_accuracy_gap": gap,
            "rows": rows}
  out = Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  (out / "sweep.json").write_text(json.dumps(result, indent=2))
  lines = [
      "# A whole sweep: one model at a time against all runs together", "",
      f"`python scripts/bench_sweep.py --config={_CONFIG.value}` on "
      f"{result['device']}, {result['machine']}, jax {jax.__version__}. "
      "Wall time of the sweep command, start-up, compilation and report "
      "included, each in a fresh workdir.", "",
      "| mode | runs | wall time | relative |", "|---|---|---|---|",
      f"| one model at a time | {len(rows)} | {separate:.0f} s | 1.00x |",
      f"| `--vectorize` (one compiled program) | {len(rows)} | "
      f"{vectorized:.0f} s | {vectorized / separate:.2f}x |", "",
      "Test accuracy (final epoch / best epoch) of each run both ways; "
      f"the largest difference is {gap:.4f} (floating-point sums in another "
      "order, amplified over the training).", "",
      "| run | separate | vectorized |", "|---|---|---|"]
  for r in rows:
    lines.append(
        f"| {r['run']} | {r['test_accuracy_separate']:.4f} / "
        f"{r['best_test_accuracy_separate']:.4f} | "
        f"{r['test_accuracy_vectorized']:.4f} / "
        f"{r['best_test_accuracy_vectorized']:.4f} |")
  (out / "sweep.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
