"""What transparent huge pages change for a compiled step whose temporaries
outgrow glibc's thread-arena heaps: the peer benchmark's training steps
(`cpac_jax.benchmarks.peers`, its --sections) run in
two processes, freed blocks kept (`process.reuse_host_memory`) and then
that with glibc's malloc backing what it maps with transparent huge pages
(`process.restart_with_huge_pages`, as cpac_jax's command lines run), each
row's median time and page faults a call side by side.

  pip install -e ".[bench]"
  python -m cpac_jax.benchmarks.huge_pages [--repeats=10]
      [--sections=layers,cpac,vgg16]

XLA's CPU runtime allocates a step's temporaries as one block from a
worker thread; over the 64 MiB heap of glibc's thread arenas, glibc maps it
afresh on every call whatever `reuse_host_memory` set, and its pages fault
in 4 KiB at a time (2 MiB with huge pages). The two settings run one after
the other, so machine noise between the processes falls on the ratios too;
PyTorch's rows run in the same processes under the same settings. Writes
experiments/benchmarks/huge_pages.{md,json}.
"""

import sys

from absl import flags

from cpac_jax.benchmarks import harness, host_memory

NAME, REPEATS, PACKAGES = "huge_pages", 10, ("torch", "tensorly-torch")
MODES = ("reuse", "huge_pages")
FAULTING = host_memory.FAULTING


def settings() -> dict:
  return {"sections": flags.FLAGS.sections}


def prepare() -> None:
  """Nothing: the two settings run in processes of their own."""


def rows(repeats: int) -> list[dict]:
  return host_memory.compare(MODES, repeats)


def _spread(rows_) -> str:
  return host_memory.spread(rows_, MODES)


def _faulting(rows_) -> list[dict]:
  return [r for r in rows_ if r["reuse_faults"] > FAULTING]


def render(run: dict) -> str:
  """huge_pages.md from a run (as huge_pages.json holds it)."""
  rows_ = run["rows"]
  faulting = _faulting(rows_)
  lines = [
      "# Host memory: transparent huge pages for what glibc maps", "",
      f"{harness.describe(run['meta'])} The peer benchmark's rows "
      "(`cpac_jax.benchmarks.peers`, PyTorch on all CPUs), run twice: "
      "keeping freed blocks (`process.reuse_host_memory`), then that with "
      "glibc's malloc backing what it maps with transparent huge pages "
      "(GLIBC_TUNABLES glibc.malloc.hugetlb=1, "
      "`process.restart_with_huge_pages`), in two processes one after the "
      "other. Faults: the process's minor page faults a timed call.", "",
      f"Huge pages / reuse, rows with over {FAULTING} faults a call with "
      f"reuse: {_spread(faulting)}. The other rows (noise between two "
      f"processes): {_spread([r for r in rows_ if r not in faulting])}.", "",
      "| shape | layer | library | path | reuse ms | faults | huge pages ms "
      "| faults | huge pages / reuse |", "|---|---|---|---|---|---|---|---|"
      "---|"]
  for r in rows_:
    lines.append(
        f"| {r['shape']} | {r['factorization']} | {r['library']} | "
        f"{r['variant']} | {r['reuse_ms']:.2f} | {r['reuse_faults']:,.0f} | "
        f"{r['huge_pages_ms']:.2f} | {r['huge_pages_faults']:,.0f} | "
        f"{r['huge_pages_ms'] / r['reuse_ms']:.2f}x |")
  return "\n".join(lines) + "\n"


def summary(run: dict) -> str:
  """The run's headline figures, for the benchmarks' README."""
  rows_ = run["rows"]
  faulting = _faulting(rows_)
  vgg = {(r["library"], r["factorization"], r["variant"]): r for r in rows_
         if r["shape"].startswith("VGG-16")}
  text = (f"- Huge pages against reuse alone, rows faulting over {FAULTING} "
          f"pages a call with reuse: {_spread(faulting)}; other rows (noise "
          f"between two processes): "
          f"{_spread([r for r in rows_ if r not in faulting])}.")
  ours = vgg.get(("cpac_jax", "CP", "auto"))
  peer = vgg.get(("tltorch", "CP", "factorized"))
  if ours and peer:
    text += (f"\n- CP VGG-16 step, ours against tltorch's factorized one in "
             f"the same process: {ours['reuse_ms'] / peer['reuse_ms']:.2f}x "
             f"with reuse alone, "
             f"{ours['huge_pages_ms'] / peer['huge_pages_ms']:.2f}x with huge "
             "pages.")
  return text


if __name__ == "__main__":
  harness.main(sys.modules[__name__])
