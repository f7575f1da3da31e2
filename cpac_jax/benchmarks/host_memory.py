"""What glibc's malloc costs a compiled step called again and again: the
peer benchmark (`cpac_jax.benchmarks.peers`) run twice in this run, first with
glibc's defaults, then with freed blocks kept for the next call
(`process.reuse_host_memory`, as cpac_jax's command lines run), each row's
median time and page faults a call side by side.

  pip install -e ".[bench]"
  python -m cpac_jax.benchmarks.host_memory [--repeats=10]
      [--sections=layers,vgg16]

glibc maps a block over its mmap threshold (at most 32 MiB) with mmap and
unmaps it on free, so a step whose temporaries need more (XLA's CPU runtime
allocates them as one block a call) faults all of their pages in on every
call. The two settings run in two processes, one after the other (a
process cannot take back `mallopt`), so machine noise between them falls
on the ratios too; the page faults count the mapping itself. PyTorch's
rows run in the same processes, under the same setting. Writes
experiments/benchmarks/host_memory.{md,json}.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from absl import flags

import cpac_jax as cj
from cpac_jax.benchmarks import harness, peers  # noqa: F401 (--sections)

NAME, REPEATS, PACKAGES = "host_memory", 10, ("torch", "tensorly-torch")
MODES = ("default", "reuse")
KEY = ("shape", "library", "factorization", "budget", "variant")
FAULTING = 100  # page faults a call


def settings() -> dict:
  return {"sections": flags.FLAGS.sections}


def prepare() -> None:
  """Nothing: the two settings run in processes of their own."""


def _run(mode: str, repeats: int, scratch: Path) -> dict:
  """The peer benchmark's record, run in a process of its own with
  --host_memory=`mode` (its environment without huge pages asked of glibc
  unless `mode` asks for them: `process.restart_with_huge_pages`)."""
  out = scratch / mode
  subprocess.run(
      [sys.executable, "-m", "cpac_jax.benchmarks.peers",
       f"--repeats={repeats}", f"--sections={','.join(flags.FLAGS.sections)}",
       f"--host_memory={mode}", f"--out={out}"], check=True,
      stdout=subprocess.DEVNULL,
      env=cj.process.no_huge_pages_env(os.environ))
  return json.loads((out / "peers.json").read_text())


def compare(modes: tuple[str, ...], repeats: int) -> list[dict]:
  """The peer benchmark's rows run under each of `modes` (peers'
  --host_memory), one process each, one after the other: per row its key,
  "kind" (step or backward) and "{mode}_ms", "{mode}_faults" of each
  mode; rows a mode failed to time are left out."""
  with tempfile.TemporaryDirectory() as scratch:
    runs = [_run(mode, repeats, Path(scratch))["rows"] for mode in modes]
  rows = []
  for same in zip(*runs):
    assert all([r[k] for k in KEY] == [same[0][k] for k in KEY]
               for r in same)
    kind = "step" if "step_ms" in same[0] else "backward"
    if any(f"{kind}_ms" not in r for r in same):
      continue  # a peer path that failed or was too slow to time
    rows.append({**{k: same[0][k] for k in KEY}, "kind": kind,
                 **{f"{mode}_{field}": r[f"{kind}_{field}"]
                    for mode, r in zip(modes, same)
                    for field in ("ms", "faults")}})
  return rows


def rows(repeats: int) -> list[dict]:
  return compare(MODES, repeats)


def spread(rows, modes: tuple[str, str] = MODES) -> str:
  """The count, median and range of the rows' time under `modes[1]` over
  that under `modes[0]` (`compare`'s rows); "none" for no rows."""
  baseline, other = modes
  ratios = sorted(r[f"{other}_ms"] / r[f"{baseline}_ms"] for r in rows)
  if not ratios:
    return "none"
  return (f"{len(ratios)} rows, median {statistics.median(ratios):.2f}x, "
          f"{ratios[0]:.2f}x to {ratios[-1]:.2f}x")


def render(run: dict) -> str:
  """host_memory.md from a run (as host_memory.json holds it)."""
  meta, rows = run["meta"], run["rows"]
  faulting = [r for r in rows if r["default_faults"] > FAULTING]
  lines = [
      "# Host memory: glibc's defaults against freed blocks kept", "",
      f"{harness.describe(meta)} The peer benchmark's rows "
      "(`cpac_jax.benchmarks.peers`, PyTorch on all CPUs: forward+backward "
      "of a layer, or a training step), run twice: with glibc's malloc at "
      "its "
      "defaults, then keeping freed blocks for the next call "
      "(`process.reuse_host_memory`), in two processes one after the other. "
      "Faults: the process's minor page faults a timed call.", "",
      f"Reuse / default, rows with over {FAULTING} faults a call by default:"
      f" {spread(faulting)}; of them, still over {FAULTING} with reuse: "
      f"{sum(r['reuse_faults'] > FAULTING for r in faulting)}. The other "
      f"rows, where the two runs compute alike and the ratio is this "
      f"machine's noise between two processes: "
      f"{spread([r for r in rows if r not in faulting])}.", "",
      "| shape | layer | budget | library | path | default ms | faults | "
      "reuse ms | faults | reuse / default |",
      "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        f"| {r['shape']} | {r['factorization']} | {r['budget']} | "
        f"{r['library']} | {r['variant']} | {r['default_ms']:.2f} | "
        f"{r['default_faults']:,.0f} | {r['reuse_ms']:.2f} | "
        f"{r['reuse_faults']:,.0f} | {r['reuse_ms'] / r['default_ms']:.2f}x |")
  return "\n".join(lines) + "\n"


def summary(run: dict) -> str:
  """The run's headline figures, for the benchmarks' README."""
  rows = run["rows"]
  faulting = [r for r in rows if r["default_faults"] > FAULTING]
  return (f"- Reuse against glibc's defaults, rows that fault over "
          f"{FAULTING} pages a call by default: {spread(faulting)}; "
          f"still faulting with reuse: "
          f"{sum(r['reuse_faults'] > FAULTING for r in faulting)}. Other "
          f"rows (noise between two processes): "
          f"{spread([r for r in rows if r not in faulting])}.")

if __name__ == "__main__":
  harness.main(sys.modules[__name__])
