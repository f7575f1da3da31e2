"""The benchmarks' README block: each record's headline figures, from the
records committed beside it.

  python -m cpac_jax.benchmarks [--check] [--out=experiments/benchmarks]

writes the block between `<!-- benchmarks:begin -->` and
`<!-- benchmarks:end -->` of the README in --out; with --check it writes
nothing and exits 1 where the block is stale.
"""

import importlib
import json
import sys

from absl import app, flags

import cpac_jax as cj
from cpac_jax.benchmarks import harness

_CHECK = flags.DEFINE_bool("check", False, "write nothing; exit 1 where the "
                           "block is stale")
# module -> the records it writes, in the README's order
RECORDS = {"vgg16": ["vgg16_train_step"], "peers": ["peers"],
           "host_memory": ["host_memory"], "huge_pages": ["huge_pages"],
           "lowering": ["lowering"],
           "layers": ["layers"], "macs_2x": ["macs_2x"],
           "tt_plans": ["tt_plans"], "tt_dense": ["tt_dense"],
           "inference": ["inference"],
           "sweep": ["sweep", "sweep_3seeds", "precision"],
           "shootout": ["shootout_steps"],
           "decompositions": ["decompositions"],
           # accelerator_<device> records, once a device has made one
           "accelerator": []}


def block() -> str:
  """The block's text: per record, its title, link, command and figures."""
  parts = []
  for module, names in RECORDS.items():
    bench = importlib.import_module(f"cpac_jax.benchmarks.{module}")
    for name in names:
      run = json.loads((harness.out_dir() / f"{name}.json").read_text())
      title = bench.render(run).splitlines()[0].lstrip("# ")
      meta = run["meta"]
      cpus = (f"{meta['cpu_count']} CPUs" if isinstance(meta["cpu_count"],
                                                         int)
              else f"CPU count {meta['cpu_count']}")
      parts.append(f"### {title} ([{name}.md]({name}.md))\n\n"
                   f"`{meta['command']}`; {meta['cpu']}, {cpus}.\n\n"
                   f"{bench.summary(run)}")
  return "\n\n".join(parts)


def main(argv):
  del argv
  return cj.report.write_blocks(
      {(harness.out_dir() / "README.md", "benchmarks"): block()},
      ["--check"] if _CHECK.value else [], "python -m cpac_jax.benchmarks")


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
