"""Every committed experiment as a study: the data it needs, the stages that
train it (each a command line, run in order) and the commands that write
its tables from the committed files. `scripts/study.py` runs them
(`scripts/reproduce.sh` is `study.py run`); nothing here reads a file.

A stage resumes: a sweep skips the runs its results.csv holds. A table
command reads only committed files, so `study.py tables` rewrites every
table, plot and generated README block without training.
"""

from typing import NamedTuple


class Study(NamedTuple):
  name: str
  data: tuple[str, ...]              # scripts/fetch_data.sh's names
  stages: tuple[tuple[str, ...], ...]
  tables: tuple[tuple[str, ...], ...]


def _sweep(config: str, workdir: str, *flags: str) -> tuple[str, ...]:
  return ("python", "-m", "cpac_jax.sweep", f"--config=configs/{config}",
          f"--workdir=experiments/{workdir}", *flags)


def _report(name: str) -> tuple[str, ...]:
  return ("python", "-m", "cpac_jax.report", f"--config=configs/{name}.py",
          f"--workdir=experiments/{name}")


def _cpac(name: str, data: str) -> Study:
  """The config's whole sweep, a seed's runs as one program."""
  return Study(name, (data,), (_sweep(f"{name}.py", name, "--vectorize"),),
               (_report(name),))


def _plain(name: str, data: str) -> Study:
  return Study(name, (data,), (_sweep(f"{name}.py", name),), (_report(name),))


def _ttl_gap(dataset: str) -> Study:
  """Learning rates chosen on held-out training data, then tested."""
  name = f"ttl_gap_{dataset}"
  return Study(name, (dataset,), (_sweep(f"{name}.py:select", f"{name}/select"),
                                  _sweep(f"{name}.py", name)),
               (("python", "scripts/ttl_gap_table.py", dataset),))


def _shootout(name: str, data: str, *flags: str) -> Study:
  return Study(name, (data,), (_sweep(f"{name}.py", name, *flags),),
               (("python", "scripts/shootout_table.py",
                 f"experiments/{name}"),))


_INTERPRET = ("python", "-m", "cpac_jax.interpret")
_BENCHMARKS = ("lowering", "layers", "peers", "macs_2x", "tt_plans",
               "tt_dense", "host_memory", "huge_pages", "vgg16", "shootout",
               "sweep", "inference", "decompositions")

STUDIES = {study.name: study for study in (
    _cpac("cpac_mnist", "mnist"),
    _cpac("cpac_mnist_1layer", "mnist"),
    _cpac("cpac_magnetic_tile", "magnetic_tile"),
    _cpac("cpac_magnetic_tile_1layer", "magnetic_tile"),
    _plain("ttl_mnist", "mnist"),
    _plain("ttl_fashion_mnist", "fashion_mnist"),
    _ttl_gap("mnist"),
    _ttl_gap("fashion_mnist"),
    _shootout("shootout_ttl_mnist", "mnist"),
    _shootout("shootout_cpac_mnist", "mnist", "--vectorize"),
    _shootout("shootout_cnn_fashion_mnist", "fashion_mnist"),
    Study("compress_fashion_mnist", ("fashion_mnist",), (
        _sweep("compress_fashion_mnist.py:select",
               "compress_fashion_mnist/selection"),
        _sweep("compress_fashion_mnist.py", "compress_fashion_mnist"),
        _sweep("compress_fashion_mnist.py:data_aware",
               "compress_fashion_mnist/data_aware")),
          (("python", "scripts/compress_table.py",
            "experiments/compress_fashion_mnist"),)),
    Study("compress_vit_fashion_mnist", ("fashion_mnist",), (
        _sweep("compress_vit_fashion_mnist.py:select",
               "compress_vit_fashion_mnist/selection"),
        _sweep("compress_vit_fashion_mnist.py", "compress_vit_fashion_mnist")),
          (("python", "scripts/vit_table.py"),)),
    Study("compress_t3f_mnist", ("mnist",),
          (_sweep("compress_t3f_mnist.py", "compress_t3f_mnist"),),
          (("python", "scripts/t3f_table.py"),)),
    # after the CPAC sweeps, whose models it reads
    Study("interpret", ("mnist", "fashion_mnist"), (
        (*_INTERPRET, "--validate", "--seeds=5", "--dataset_seeds=3",
         "--out=experiments/interpret"),
        (*_INTERPRET, "--synthetic", "--seeds=5",
         "--out=experiments/interpret"),
        *((*_INTERPRET, f"--sweep_dir=experiments/{sweep}", f"--rank={rank}",
           "--init=official", "--random_orders=20",
           "--out=experiments/interpret")
          for sweep, rank in (("cpac_mnist", 4), ("cpac_mnist", 8),
                              ("cpac_mnist_1layer", 5)))),
          ((*_INTERPRET, "--redraw", "--out=experiments/interpret"),)),
    # times, not accuracies: run them on an idle machine
    Study("benchmarks", ("mnist",), (*(
        ("python", "-m", f"cpac_jax.benchmarks.{name}") for name in
        _BENCHMARKS), (
            "python", "-m", "cpac_jax.benchmarks.sweep",
            "--config=configs/cpac_mnist.py:quick",
            "--modes=vectorized,bfloat16", "--reference=",
            "--name=precision")), (
            *(("python", "-m", f"cpac_jax.benchmarks.{name}",
               "--render_only") for name in _BENCHMARKS if name != "sweep"),
            ("python", "-m", "cpac_jax.benchmarks.sweep", "--render_only",
             "--name=sweep"),
            ("python", "-m", "cpac_jax.benchmarks.sweep", "--render_only",
             "--name=sweep_3seeds"),
            ("python", "-m", "cpac_jax.benchmarks.sweep", "--render_only",
             "--name=precision"),
            ("python", "-m", "cpac_jax.benchmarks"))),
)}
# What `study.py run` runs by default: the tables the papers are cited for,
# without the interpretability retraining and the benchmarks' timing.
DEFAULT = tuple(name for name in STUDIES
                if name not in ("interpret", "benchmarks"))
# Blocks drawn from several studies' files, written after all of them.
SUMMARIES = (("python", "scripts/cpac_gap.py"),
             ("python", "scripts/headline.py"))
