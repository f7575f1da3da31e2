"""The one harness every benchmark runs on.

A benchmark is a module with

  NAME      the stem of the files it writes, NAME.json and NAME.md;
  REPEATS   timed calls per variant by default (--repeats overrides);
  PACKAGES  the distributions whose versions its record names;
  rows(repeats) -> [dict, ...]   what it measured (`measure` times variants);
  render(run) -> str             NAME.md from a run, {"meta", "rows"};

and, optionally, `settings() -> dict`, its own flags' values for the
record (and its command); `record() -> dict`, what else its record's meta
must hold to render (constants the code it timed ran by); `prepare()`,
run first instead of `process.reuse_host_memory`;
`PROTOCOL`, how it times where that is not `measure`'s; `name()`, the
stem where a flag sets it. `main(module)` is its command line:

  python -m cpac_jax.benchmarks.NAME [--repeats=N] [--out=DIR]
      [--render_only]

which prepares the process as cpac_jax's command lines run
(`process.reuse_host_memory`), measures, records the machine and the
command, and writes NAME.json then NAME.md, each whole or not at all;
--render_only rewrites NAME.md from the NAME.json in --out, timing
nothing.

The timing protocol (`measure`): each variant builds its zero-argument
calls (one per kind: "forward", "backward", "step", ...) and is warmed up
by two calls; then `repeats` rounds, the variants in a new, seeded order
each round so machine noise and what the variant before left in the caches
hit all alike, each timed call right after an untimed one of the same
variant (a call that follows another variant's runs cold); the median
time of each, and the process's minor page faults a timed call took
(memory mapped afresh). A variant that raises is a result: its row gets
the error.
"""

import functools
import json
import math
import os
import platform
import random
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from absl import app, flags
from flax import nnx

import cpac_jax as cj

__all__ = ["PROTOCOL", "Slow", "Variant", "describe", "layer_calls",
           "machine", "main", "measure", "out_dir", "run", "small_run",
           "write"]

_REPEATS = flags.DEFINE_integer(
    "repeats", None, "timed calls per variant (default: the benchmark's)")
_OUT = flags.DEFINE_string("out", "experiments/benchmarks",
                           "folder for NAME.json and NAME.md")
_RENDER_ONLY = flags.DEFINE_bool(
    "render_only", False, "rewrite NAME.md from the NAME.json in --out (its "
    "prose, after a change to the benchmark), timing nothing")


# What `measure` does, as a run's record states it (a record made another
# way states its own).
PROTOCOL = ("the median of {repeats} timed calls per variant after two "
            "warm-up calls, the variants of a group interleaved in a new "
            "(seeded) order each round, each timed call right after an "
            "untimed one of the same variant")


class Slow(Exception):
  """A warm-up call over `measure`'s slow_s: reported, not timed."""


class Variant(NamedTuple):
  """One thing to time: the `row` it fills (what the table shows of it)
  and `build()`, which makes it and returns its zero-argument calls by
  kind ({"forward": f, "backward": g}); build may fill `row` too (its
  parameter count, say)."""
  row: dict
  build: Callable[[], dict[str, Callable[[], Any]]]


def layer_calls(layer, x) -> dict[str, Callable[[], Any]]:
  """"forward" and "backward" (forward+backward: the gradient of sum(y^2)
  with respect to the parameters) zero-argument calls of an nnx layer on
  `x`, compiled as cpac_jax's training compiles its steps
  (`cj.process.compiler_options`)."""
  graphdef, params = nnx.split(layer)
  jit = functools.partial(jax.jit,
                          compiler_options=cj.process.compiler_options())
  forward = jit(lambda p, x: nnx.merge(graphdef, p)(x))
  backward = jit(jax.grad(
      lambda p, x: jnp.sum(nnx.merge(graphdef, p)(x) ** 2)))
  return {"forward": lambda: jax.block_until_ready(forward(params, x)),
          "backward": lambda: jax.block_until_ready(backward(params, x))}


def _warm(call, slow_s: float) -> None:
  """Two warm-up calls (compilation, allocator); Slow if the second takes
  over `slow_s` seconds."""
  call()
  start = time.perf_counter()
  call()
  seconds = time.perf_counter() - start
  if seconds > slow_s:
    raise Slow(f"too slow to time: {seconds:.1f} s a call")


def measure(variants: Iterable[Variant], repeats: int,
            slow_s: float = math.inf) -> list[dict]:
  """Times `variants` interleaved (the module's protocol) and returns
  their rows, each given "{kind}_ms" (median milliseconds),
  "{kind}_iqr_ms" (interquartile range) and "{kind}_faults" (minor page
  faults a timed call) per kind, or "error"
  where building or warming it up raised (or took over `slow_s` seconds a
  call)."""
  variants = list(variants)
  calls = {}
  for index, (row, build) in enumerate(variants):
    try:
      built = build()
      for call in built.values():
        _warm(call, slow_s)
    except Slow as slow:
      row["error"] = str(slow)
    except Exception as error:  # a variant that fails is a result
      row["error"] = f"{type(error).__name__}: {str(error)[:160]}"
    else:
      calls.update({(index, kind): call for kind, call in built.items()})
  samples = {key: [] for key in calls}
  faults = dict.fromkeys(calls, 0)
  order, rng = list(calls), random.Random(0)
  for _ in range(repeats):
    rng.shuffle(order)
    for key in order:
      calls[key]()
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      start = time.perf_counter()
      calls[key]()
      samples[key].append(time.perf_counter() - start)
      faults[key] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
  for (index, kind), seconds in samples.items():
    row = variants[index].row
    row[f"{kind}_ms"] = 1e3 * statistics.median(seconds)
    quartiles = (statistics.quantiles(seconds, n=4) if len(seconds) > 1
                 else [seconds[0]] * 3)
    row[f"{kind}_iqr_ms"] = 1e3 * (quartiles[2] - quartiles[0])
    row[f"{kind}_faults"] = faults[(index, kind)] / repeats
  return [row for row, _ in variants]


def machine(packages: Iterable[str] = ()) -> dict:
  """The record of where a benchmark ran: JAX's device, the processor,
  its core count, and the versions of jax, flax and `packages`."""
  versions = {}
  for name in dict.fromkeys(("jax", "flax", *packages)):
    try:
      versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      versions[name] = "not installed"
  return {"device": f"{jax.devices()[0].device_kind} "
                    f"({jax.default_backend()})",
          "machine": platform.machine(), "cpu": cj.report.cpu_name(),
          "cpu_count": os.cpu_count(), "versions": versions}


def describe(meta: dict) -> str:
  """What a record's meta says of how it was made (command, machine,
  versions, timing protocol), for the top of a NAME.md."""
  versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
  return (f"`{meta['command']}` on {meta['device']}, {meta['cpu']} "
          f"({meta['machine']}), {meta['cpu_count']} CPUs; {versions}. "
          f"Timing: {meta['protocol']}.")


def write(path: Path, text: str) -> None:
  """`text` into `path`, whole or not at all (a file beside it, renamed
  over it)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  partial = path.with_name(path.name + ".partial")
  partial.write_text(text)
  partial.replace(path)


def _command(benchmark, repeats: int) -> str:
  settings = {**({"repeats": repeats} if repeats != benchmark.REPEATS
                 else {}), **getattr(benchmark, "settings", dict)()}
  return " ".join([f"python -m {benchmark.__spec__.name}", *(
      f"--{name}={','.join(value) if isinstance(value, list) else value}"
      for name, value in settings.items())])


def out_dir() -> Path:
  """The folder the benchmark writes to (--out), where it finds the other
  benchmarks' records."""
  return Path(_OUT.value)


def small_run(prefix: str, repeats: int) -> None:
  """Set up a check-the-command run (a `--quick` or `--dry_run` flag): its
  files into a new temporary folder named `prefix`... unless --out is
  given, `repeats` timed calls unless --repeats is, and XLA's backend at
  optimization level 1 (its compiles, most of such a run's CPU time, take
  about 40% less). Call it before JAX starts a backend."""
  if not flags.FLAGS["out"].present:
    flags.FLAGS.out = tempfile.mkdtemp(prefix=prefix)
  if not flags.FLAGS["repeats"].present:
    flags.FLAGS.repeats = repeats
  if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS",
                                                              ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_backend_optimization_level=1"
                               ).strip()


def run(benchmark) -> None:
  """What `main` runs, after absl has parsed the flags."""
  name = benchmark.name() if hasattr(benchmark, "name") else benchmark.NAME
  json_path, md_path = (out_dir() / f"{name}.{ext}" for ext in ("json", "md"))
  if _RENDER_ONLY.value:
    if not json_path.exists():
      raise app.UsageError(f"--render_only: no {json_path} to render; run "
                           "the benchmark without it first")
    write(md_path, benchmark.render(json.loads(json_path.read_text())))
    print(f"wrote {md_path}")
    return
  repeats = (benchmark.REPEATS if _REPEATS.value is None
             else _REPEATS.value)
  if repeats < 1:
    raise app.UsageError(f"--repeats={repeats}: give 1 or more")
  # as cpac_jax's command lines run, unless the benchmark says otherwise
  getattr(benchmark, "prepare", cj.process.reuse_host_memory)()
  rows = benchmark.rows(repeats)
  meta = {**machine(benchmark.PACKAGES), "repeats": repeats,
          "command": _command(benchmark, repeats),
          "protocol": getattr(benchmark, "PROTOCOL", PROTOCOL).format(
              repeats=repeats),
          **getattr(benchmark, "settings", dict)(),
          **getattr(benchmark, "record", dict)()}
  run_ = {"meta": meta, "rows": rows}
  text = benchmark.render(run_)  # before any file: a failing render writes none
  write(json_path, json.dumps(run_, indent=1, default=str))
  write(md_path, text)
  print(f"wrote {json_path} and {md_path}")


def main(benchmark) -> None:
  """The command line of `benchmark` (its module)."""
  app.run(lambda argv: run(benchmark) if len(argv) == 1 else _extra(argv))


def _extra(argv):
  raise app.UsageError(f"unexpected arguments {argv[1:]}; flags only")
