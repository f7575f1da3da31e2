"""What glibc's malloc costs a compiled step called again and again: the
peer benchmark (scripts/bench_peers.py) run twice in this run, first with
glibc's defaults, then with freed blocks kept for the next call
(`process.reuse_host_memory`, as cpac_jax's command lines run), each row's
median time and page faults a call side by side.

  pip install -e ".[bench]"
  python scripts/bench_host_memory.py [--repeats=10] [--sections=layers,vgg16]

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
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from absl import app, flags

_REPEATS = flags.DEFINE_integer("repeats", 10, "timed calls per variant")
_SECTIONS = flags.DEFINE_list("sections", ["layers", "vgg16"],
                              "bench_peers.py's sections to run")
_OUT = flags.DEFINE_string("out", "experiments/benchmarks",
                           "folder for host_memory.{md,json}")
MODES = ("default", "reuse")
KEY = ("shape", "library", "factorization", "budget", "variant")
FAULTING = 100  # page faults a call


def _run(mode: str, scratch: Path) -> dict:
  out = scratch / mode
  subprocess.run(
      [sys.executable, str(Path(__file__).with_name("bench_peers.py")),
       f"--repeats={_REPEATS.value}",
       f"--sections={','.join(_SECTIONS.value)}", f"--host_memory={mode}",
       f"--out={out}"], check=True, stdout=subprocess.DEVNULL)
  return json.loads((out / "peers.json").read_text())


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as scratch:
    runs = {mode: _run(mode, Path(scratch)) for mode in MODES}
  meta = runs["reuse"]["meta"]
  rows = []
  for default, reuse in zip(runs["default"]["rows"], runs["reuse"]["rows"]):
    assert [default[k] for k in KEY] == [reuse[k] for k in KEY]
    kind = "step" if "step_ms" in default else "backward"
    if f"{kind}_ms" not in default or f"{kind}_ms" not in reuse:
      continue  # a peer path that failed or was too slow to time
    rows.append({**{k: default[k] for k in KEY}, "kind": kind,
                 **{f"{mode}_{field}": run[f"{kind}_{field}"]
                    for mode, run in (("default", default), ("reuse", reuse))
                    for field in ("ms", "faults")}})
  command = ("python scripts/bench_host_memory.py "
             f"--repeats={_REPEATS.value} "
             f"--sections={','.join(_SECTIONS.value)}")
  _write(Path(_OUT.value), meta, command, rows)


def _spread(rows) -> str:
  ratios = sorted(r["reuse_ms"] / r["default_ms"] for r in rows)
  if not ratios:
    return "none"
  return (f"{len(ratios)} rows, median {statistics.median(ratios):.2f}x, "
          f"{ratios[0]:.2f}x to {ratios[-1]:.2f}x")


def _write(out: Path, meta: dict, command: str, rows: list) -> None:
  faulting = [r for r in rows if r["default_faults"] > FAULTING]
  lines = [
      "# Host memory: glibc's defaults against freed blocks kept", "",
      f"`{command}` on {meta['device']}, {meta['cpu']}, {meta['cpu_count']} "
      f"CPUs, PyTorch on {meta['torch_threads']} threads. "
      "scripts/bench_peers.py's rows (forward+backward of a layer, or a "
      "training step), median of "
      f"{meta['repeats']} calls, run twice: with glibc's malloc at its "
      "defaults, then keeping freed blocks for the next call "
      "(`process.reuse_host_memory`), in two processes one after the other. "
      "Faults: the process's minor page faults a timed call.", "",
      f"Reuse / default, rows with over {FAULTING} faults a call by default:"
      f" {_spread(faulting)}; of them, still over {FAULTING} with reuse: "
      f"{sum(r['reuse_faults'] > FAULTING for r in faulting)}. The other "
      f"rows, where the two runs compute alike and the ratio is this "
      f"machine's noise between two processes: "
      f"{_spread([r for r in rows if r not in faulting])}.", "",
      "| shape | layer | budget | library | path | default ms | faults | "
      "reuse ms | faults | reuse / default |",
      "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        f"| {r['shape']} | {r['factorization']} | {r['budget']} | "
        f"{r['library']} | {r['variant']} | {r['default_ms']:.2f} | "
        f"{r['default_faults']:,.0f} | {r['reuse_ms']:.2f} | "
        f"{r['reuse_faults']:,.0f} | {r['reuse_ms'] / r['default_ms']:.2f}x |")
  out.mkdir(parents=True, exist_ok=True)
  (out / "host_memory.json").write_text(
      json.dumps({"meta": meta, "command": command, "rows": rows}, indent=2))
  (out / "host_memory.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
