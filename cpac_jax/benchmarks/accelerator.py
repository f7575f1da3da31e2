"""The accelerator check: on one GPU (or TPU), in under 8 minutes, whether
cpac_jax runs there and how fast, as one record.

  python -m cpac_jax.benchmarks.accelerator [--dry_run] [--out=DIR]
      [--sweep_epochs=1] [--budget_s=450] [--tests_timeout_s=180]
  bash scripts/accelerator_check.sh [the same flags]  # MNIST fetched first

Stages, in order, each a row of the record; a stage that fails or runs out
of time is a result (its row says so) and the next one still runs:

  device  what JAX runs on: the device kind, count and memory, the
          platform's version, `nvidia-smi`'s line where there is one, and
          the installed JAX plugins (beside the versions of jax, jaxlib,
          flax, optax and numpy in the record's meta).
  tests   the fast tests, `python -m pytest -m "not slow"` (pytest-xdist's
          workers, one per core), in a process of their own: passed,
          failed and skipped counts, the failures' names, the wall time.
  layers  the layer benchmark (`cpac_jax.benchmarks.layers`) on the three
          shapes its `auto` cost was fitted to (3x3 convs 64->64 on 32x32
          and 256->256 on 16x16, 784->300: 78 layers), timed by
          `harness.measure`: each layer's forward and forward+backward
          time against the device's dense layer of the shape (there, XLA's
          conv: `conv_lowering` takes its CPU lowerings on the CPU alone),
          and the path `auto` took against the faster one.
  sweep   one CPAC seed swept `--vectorize`: the config of the vectorized
          row of the committed CPU record (--cpu_record,
          experiments/benchmarks/sweep.json: `configs/cpac_mnist.py:
          default_seed0`, 13 runs at batch size 1), `--sweep_epochs` of its
          10 epochs, in a scratch workdir; its wall time (start-up,
          compilation and report included, as the CPU's was timed) against
          the CPU's prorated to those epochs. The prorating shrinks the
          CPU's start-up and compilation too, so the prorated time is less
          than the CPU would take: the ratio errs in the CPU's favour.

It writes NAME.json then NAME.md into --out (experiments/benchmarks), NAME
`accelerator_<device kind>`, e.g. accelerator_nvidia_h100_80gb_hbm3.

Its sizes are chosen to fit 8 minutes on one GPU (estimates: no GPU has
run it yet): start-up and the device row take seconds; the tests are
stopped at --tests_timeout_s (180 s; about 230 tests over the workers);
the layers compile 156 small programs and time them in 10 rounds (a
minute or two; not stopped); the sweep gets what is left of --budget_s
(450 s, counted from the first stage) and is stopped there: one epoch is
60,000 steps of the 13 nets stacked, then the test set. The process sets
XLA_PYTHON_CLIENT_PREALLOCATE=false (where unset) before JAX starts, so
the tests' workers and the sweep share the device's memory with it.

--dry_run runs every stage at tiny size on whatever backend JAX has (the
CPU under CI; tests/test_accelerator.py runs it): the tests of
tests/test_stats.py in one process; the layers at one rank fraction, of a
3x3 conv 4->8 on 8x8 (`auto` only; on the CPU its dense runs through
patches_conv too) and of 16->8 (every path); the
`configs/cpac_mnist.py:quick` sweep (5 runs) for one epoch, two steps, on
MNIST-format data it generates; 2 timed rounds; XLA's backend at
optimization level 1, as the tests compile (compiling is most of its
time). It writes into a fresh temporary folder unless --out names one,
never into experiments/benchmarks; its times and ratios mean nothing.
"""

import gzip
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import jax
import jax.extend
import numpy as np
from absl import app, flags
from flax import nnx

import cpac_jax as cj
from cpac_jax.benchmarks import harness, layers

NAME, REPEATS, PACKAGES = "accelerator", 10, ("jaxlib", "optax", "numpy")
PROTOCOL = ("the stages one after another in one process (tests and sweep "
            "in processes of their own); the layers by `harness.measure`: "
            "the median of {repeats} timed calls per variant after two "
            "warm-up calls, interleaved in a new (seeded) order each round; "
            "the tests and the sweep by their wall time, once")
DEFAULT_OUT = "experiments/benchmarks"
# The dry run's stage sizes.
DRY_TESTS = ("tests/test_stats.py",)
DRY_SWEEP_CONFIG = "configs/cpac_mnist.py:quick"
DRY_EXAMPLES = {"train": 64, "t10k": 40}  # two steps at quick's batch 32
DRY_REPEATS = 2

_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "every stage at tiny size, into a temporary folder "
    "(or --out): checks the command, times nothing that means anything")
_SWEEP_EPOCHS = flags.DEFINE_integer(
    "sweep_epochs", 1, "epochs of the CPAC seed's sweep (the CPU record "
    "trained 10)")
_SWEEP_CONFIG = flags.DEFINE_string(
    "sweep_config", "", "the sweep's config with preset (default: the CPU "
    "record's; the dry run's: " + DRY_SWEEP_CONFIG + ")")
_CPU_RECORD = flags.DEFINE_string(
    "cpu_record", "experiments/benchmarks/sweep.json",
    "the committed CPU sweep record whose vectorized time the sweep is set "
    "beside")
_BUDGET_S = flags.DEFINE_integer(
    "budget_s", 450, "seconds for all stages: the sweep is stopped when "
    "they are spent")
_TESTS_TIMEOUT_S = flags.DEFINE_integer(
    "tests_timeout_s", 180, "seconds after which the tests are stopped")


def name() -> str:
  """accelerator_<device kind>, in lower case, runs of other characters
  as one underscore."""
  kind = jax.devices()[0].device_kind
  return "accelerator_" + re.sub(r"[^a-z0-9]+", "_", kind.lower()).strip("_")


def settings() -> dict:
  return {"dry_run": _DRY_RUN.value, "sweep_epochs": _SWEEP_EPOCHS.value,
          "sweep_config": _sweep_config(), "cpu_record": _CPU_RECORD.value,
          "budget_s": _BUDGET_S.value,
          "tests_timeout_s": _TESTS_TIMEOUT_S.value}


def _sweep_config() -> str:
  if _SWEEP_CONFIG.value:
    return _SWEEP_CONFIG.value
  if _DRY_RUN.value:
    return DRY_SWEEP_CONFIG
  return _cpu_run()[0]["config"]


def _cpu_run() -> tuple[dict, dict]:
  """The CPU record's meta and its vectorized row."""
  record = json.loads(Path(_CPU_RECORD.value).read_text())
  rows = [r for r in record["rows"] if r["mode"] == "vectorized"]
  if not rows:
    raise ValueError(f"{_CPU_RECORD.value} has no vectorized row; give a "
                     "record of `cpac_jax.benchmarks.sweep --modes="
                     "vectorized`")
  return record["meta"], rows[0]


def prepare() -> None:
  """Checks the flags, the CPU record and (not dry) the device and the data
  before any stage runs; then keeps freed host memory as the command lines
  do (`process.reuse_host_memory`)."""
  for flag in (_SWEEP_EPOCHS, _BUDGET_S, _TESTS_TIMEOUT_S):
    if flag.value < 1:
      raise app.UsageError(f"--{flag.name}={flag.value}: give 1 or more")
  if _DRY_RUN.value and (harness.out_dir().resolve()
                         == Path(DEFAULT_OUT).resolve()):
    raise app.UsageError(f"--dry_run writes no record into {DEFAULT_OUT}; "
                         "leave --out out (a temporary folder) or name "
                         "another")
  try:
    _cpu_run()
  except (OSError, ValueError, KeyError) as error:
    raise app.UsageError(f"--cpu_record={_CPU_RECORD.value}: {error}"
                         ) from None
  if not _DRY_RUN.value:
    if jax.default_backend() == "cpu":
      raise app.UsageError(
          "JAX runs on the CPU here: the check is for a GPU or TPU (install "
          "the matching jax, docs/scaling.md); on the CPU, --dry_run checks "
          "the command")
    try:
      cj.data.load("mnist", "test")
    except cj.data.DataNotFoundError as error:
      raise app.UsageError(str(error)) from None
  cj.process.reuse_host_memory()


def rows(repeats: int) -> list[dict]:
  """The stages' rows: device, tests, layers, sweep."""
  deadline = time.monotonic() + _BUDGET_S.value
  with tempfile.TemporaryDirectory(prefix="accelerator_") as scratch:
    return [_stage("device", _device),
            _stage("tests", _tests, Path(scratch)),
            _stage("layers", _layers, repeats),
            _stage("sweep", _sweep, Path(scratch), deadline)]


def _stage(stage: str, run, *args) -> dict:
  """{"stage", "seconds", ...what `run` returned}, or its error: a stage
  that raises is a result, and the next one runs."""
  print(f"accelerator check: {stage}", flush=True)
  start = time.perf_counter()
  try:
    row = run(*args)
  except Exception as error:  # a failing stage is a result
    row = {"error": f"{type(error).__name__}: {str(error)[:500]}"}
  return {"stage": stage, "seconds": time.perf_counter() - start, **row}


def _device() -> dict:
  device = jax.devices()[0]
  stats = device.memory_stats() or {}  # None on the CPU
  plugins = {d.metadata["Name"]: d.version for d in metadata.distributions()
             if re.match(r"(jax[-_](cuda|rocm)|libtpu)",
                         d.metadata["Name"] or "")}
  row = {"backend": jax.default_backend(), "kind": device.device_kind,
         "count": jax.device_count(),
         "platform_version": jax.extend.backend.get_backend().platform_version,
         "memory_gib": (stats["bytes_limit"] / 2**30
                        if "bytes_limit" in stats else None),
         "plugins": dict(sorted(plugins.items()))}
  if shutil.which("nvidia-smi"):
    smi = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
         "--format=csv,noheader"], capture_output=True, text=True,
        timeout=60, check=False)
    row["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
  return row


def _run(command: list[str], timeout_s: float, log: Path
         ) -> tuple[int | None, str]:
  """`command`'s exit code (None: stopped after `timeout_s` seconds, with
  every process it started) and its output, which `log` keeps."""
  with open(log, "w") as out:
    # its own process group, so a timeout stops its children too
    process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
      code = process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
      os.killpg(process.pid, signal.SIGKILL)
      process.wait()
      code = None
  return code, log.read_text(errors="replace")


def pytest_counts(output: str) -> dict[str, int]:
  """{"passed": n, "failed": n, ...} from pytest's last summary line in
  `output` ({} where there is none)."""
  outcomes = r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected)"
  for line in reversed(output.splitlines()):
    found = re.findall(outcomes, line)
    if found and " in " in line:
      return {("error" if kind.startswith("error") else kind): int(n)
              for n, kind in found}
  return {}


def _tests(scratch: Path) -> dict:
  args = ["-m", "not slow", "-q", "-rfE", "-p", "no:cacheprovider"]
  if _DRY_RUN.value:
    args += ["-n", "0", *DRY_TESTS]
  code, output = _run([sys.executable, "-m", "pytest", *args],
                      _TESTS_TIMEOUT_S.value, scratch / "tests.log")
  failures = [line.split(" - ")[0].split(" ", 1)[1]
              for line in output.splitlines()
              if line.startswith(("FAILED ", "ERROR "))]
  return {"command": "python -m pytest " + " ".join(
              f'"{a}"' if " " in a else a for a in args),
          "exit_code": code, "timed_out": code is None,
          "counts": pytest_counts(output), "failures": failures[:40],
          # where pytest itself failed, what it said
          "tail": output[-2000:] if code not in (0, 1) else ""}


def _layers(repeats: int) -> dict:
  if _DRY_RUN.value:
    rngs, one = nnx.Rngs(0), {"f=0.5": 0.5}
    # 4 input channels: on the CPU, a second dense through patches_conv
    shapes = [(*layers.conv_case(4, 8, 3, 8, 2, rngs, fractions=one,
                                 implementations=("auto",)), True),
              (*layers.dense_case((4, 4), (8,), 4, [], ((2, 2, 2, 2),
                                                        (2, 2, 2, 1)),
                                  rngs, fractions=one), True)]
  else:
    shapes = layers.cases(fitted_only=True)
  return {"rows": layers.rows(repeats, shapes)}


def _write_idx(path: Path, array: np.ndarray) -> None:
  """`array` as a gzipped IDX file of unsigned bytes, as MNIST ships."""
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
      int(n).to_bytes(4, "big") for n in array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def _generated_mnist(root: Path) -> Path:
  """A data dir holding an MNIST of random images, DRY_EXAMPLES in size."""
  folder = root / "mnist"
  folder.mkdir(parents=True)
  rng = np.random.default_rng(0)
  for split, count in DRY_EXAMPLES.items():
    _write_idx(folder / f"{split}-images-idx3-ubyte.gz",
               rng.integers(0, 256, (count, 28, 28)))
    _write_idx(folder / f"{split}-labels-idx1-ubyte.gz",
               rng.integers(0, 10, count))
  return root


def _config_epochs(spec: str) -> int:
  """num_epochs of the config `spec` ("path.py" or "path.py:preset"), as
  `--config=spec` loads it."""
  path, _, preset = spec.partition(":")
  loader = importlib.util.spec_from_file_location(Path(path).stem, path)
  module = importlib.util.module_from_spec(loader)
  loader.loader.exec_module(module)
  config = module.get_config(preset) if preset else module.get_config()
  return config.num_epochs


def _sweep(scratch: Path, deadline: float) -> dict:
  meta, cpu = _cpu_run()
  config, epochs = _sweep_config(), _SWEEP_EPOCHS.value
  cpu_epochs = _config_epochs(meta["config"])
  prorated = cpu["seconds"] * epochs / cpu_epochs
  row = {"config": config, "epochs": epochs, "cpu": {
      "record": _CPU_RECORD.value, "command": meta["command"],
      "config": meta["config"], "cpu": meta["cpu"],
      "cpu_count": meta["cpu_count"], "seconds": cpu["seconds"],
      "epochs": cpu_epochs, "runs": len(cpu["runs"]),
      "prorated_seconds": prorated}}
  left = deadline - time.monotonic()
  if left < 10:
    return {**row, "error": f"--budget_s={_BUDGET_S.value} spent before "
                            "the sweep"}
  workdir = scratch / "sweep"
  overrides = [f"--config.num_epochs={epochs}"]
  if _DRY_RUN.value:
    data = _generated_mnist(scratch / "data")
    overrides.append(f"--config.dataset.data_dir={data}")
  command = [sys.executable, "-m", "cpac_jax.sweep", f"--config={config}",
             f"--workdir={workdir}", "--vectorize", *overrides]
  start = time.perf_counter()
  code, output = _run(command, left, scratch / "sweep.log")
  seconds = time.perf_counter() - start
  row.update({"command": " ".join(["python", *command[1:]]).replace(
                  str(scratch), "$SCRATCH"),
              "exit_code": code, "timed_out": code is None,
              "wall_seconds": seconds})
  if code != 0:
    return {**row, "tail": output[-2000:]}
  results = cj.rundir.read_results(workdir)
  accuracies = [float(r["test_accuracy"]) for r in results
                if r["status"] == "ok"]
  return {**row, "runs": len(results), "ok": len(accuracies),
          "test_accuracy": ([min(accuracies), max(accuracies)] if accuracies
                            else None),
          "vs_cpu": seconds / prorated}


def _ratio(value) -> str:
  return "-" if value is None else f"{value:.2f}x"


def _layer_lines(stage: dict) -> list[str]:
  """Per shape, each layer's `auto` and its two paths against the dense
  reference; then how often `auto` took the faster path and stayed within
  1.1x of the dense."""
  rows = stage["rows"]
  lines = []
  picked = within = total = 0
  for shape in dict.fromkeys(r["shape"] for r in rows):
    group = [r for r in rows if r["shape"] == shape]
    by_variant = {r["variant"]: r for r in group}
    denses = "; ".join(
        f"`{r['variant']}` {_ratio(r.get('forward_vs_dense'))} / "
        f"{_ratio(r.get('backward_vs_dense'))}" for r in group
        if r["variant"].split(" ")[0] == "dense")
    lines += [f"### {shape}", "",
              f"Dense reference: `{group[0].get('dense_reference', '-')}` "
              f"(forward / fwd+bwd: {denses}).",
              "", "| layer | compression | auto's path | auto forward "
              "| auto fwd+bwd | factorized fwd+bwd | reconstructed fwd+bwd |",
              "|---|---|---|---|---|---|---|"]
    for r in group:
      if not r["variant"].endswith(" auto"):
        continue
      layer = r["variant"].removesuffix(" auto")
      twins = {path: by_variant.get(f"{layer} {path}")
               for path in ("factorized", "reconstructed")}
      cells = [_ratio(r.get("forward_vs_dense")),
               _ratio(r.get("backward_vs_dense"))] + [
                   _ratio((twin or {}).get("backward_vs_dense"))
                   for twin in twins.values()]
      if "error" in r:
        cells[0] = f"error: {r['error'][:80]}"
      lines.append(f"| {layer} | {r['compression']:.1f}x | "
                   f"{r['auto_path']} | " + " | ".join(cells) + " |")
      timed = {p: t["backward_vs_dense"] for p, t in twins.items()
               if t and "backward_vs_dense" in t}
      if len(timed) == 2 and "backward_vs_dense" in r:
        total += 1
        picked += r["auto_path"] == min(timed, key=timed.get)
        within += max(r["forward_vs_dense"], r["backward_vs_dense"]) <= 1.1
    lines.append("")
  if total:
    lines += [f"`auto` took the faster path (fwd+bwd) in {picked} of {total}"
              f" layers and stayed within 1.1x of the dense (forward and "
              f"fwd+bwd) in {within} of {total}.", ""]
  return lines


def _sweep_lines(stage: dict) -> list[str]:
  cpu = stage["cpu"]
  lines = [f"`{stage.get('command', stage['config'])}`", ""]
  if "vs_cpu" not in stage:
    reason = ("stopped at the end of --budget_s" if stage.get("timed_out")
              else stage.get("error") or f"exit code {stage['exit_code']}")
    return lines + [f"Not finished: {reason}.", "",
                    *(["```", stage["tail"].strip(), "```", ""]
                      if stage.get("tail") else [])]
  runs = f"{stage['ok']} of {stage['runs']}"
  return lines + [
      "| where | runs | epochs | wall time | relative |",
      "|---|---|---|---|---|",
      f"| this device | {runs} | {stage['epochs']} "
      f"| {stage['wall_seconds']:.0f} s | {stage['vs_cpu']:.3f}x |",
      f"| {cpu['cpu']}, {cpu['cpu_count']} CPUs, prorated to "
      f"{stage['epochs']} of its {cpu['epochs']} epochs "
      f"| {cpu['runs']} | {stage['epochs']} "
      f"| {cpu['prorated_seconds']:.0f} s | 1.00x |",
      f"| the same, as recorded (`{cpu['command']}`) | {cpu['runs']} "
      f"| {cpu['epochs']} | {cpu['seconds']:.0f} s | - |", "",
      "Wall time of the sweep command, start-up, compilation and report "
      "included, as the CPU's; the prorating shrinks the CPU's start-up "
      "and compilation too, so the ratio errs in the CPU's favour. Test "
      "accuracy of its runs: " + ("{:.4f}-{:.4f}".format(
          *stage["test_accuracy"]) if stage["test_accuracy"] else "none "
                                  "finished") + ".", ""]


def render(run: dict) -> str:
  """NAME.md from a run (as NAME.json holds it)."""
  meta = run["meta"]
  stages = {r["stage"]: r for r in run["rows"]}
  device, tests = stages["device"], stages["tests"]
  lines = [f"# Accelerator check: {device.get('kind', meta['device'])}", "",
           harness.describe(meta), ""]
  if meta.get("dry_run"):
    lines += ["**Dry run**: every stage at tiny size; its times and ratios "
              "mean nothing.", ""]
  lines += ["## Device", ""]
  if "error" in device:
    lines += [f"Error: {device['error']}", ""]
  else:
    memory = (f"{device['memory_gib']:.1f} GiB"
              if device["memory_gib"] is not None else "-")
    plugins = ", ".join(f"{k} {v}" for k, v in device["plugins"].items())
    lines += ["| backend | device | count | memory | platform | plugins |",
              "|---|---|---|---|---|---|",
              f"| {device['backend']} | {device['kind']} | {device['count']} "
              f"| {memory} | {device['platform_version']} "
              f"| {plugins or '-'} |", ""]
    if device.get("nvidia_smi"):
      lines += [f"nvidia-smi: {device['nvidia_smi']}", ""]
  lines += ["## Fast tests", ""]
  if "error" in tests:
    lines += [f"Error: {tests['error']}", ""]
  else:
    counts = ", ".join(f"{n} {kind}" for kind, n in tests["counts"].items())
    state = ("stopped at --tests_timeout_s" if tests["timed_out"]
             else f"exit code {tests['exit_code']}")
    lines += [f"`{tests['command']}`: {counts or 'no summary'} in "
              f"{tests['seconds']:.0f} s ({state}).", ""]
    lines += [f"- {name}" for name in tests["failures"]]
    if tests["failures"]:
      lines.append("")
    if tests["tail"]:
      lines += ["```", tests["tail"].strip(), "```", ""]
  lines += ["## Layers against the device's dense layer", "",
            "Forward and forward+backward time relative to the fastest dense "
            "layer of the same shape, in this run "
            "(`cpac_jax.benchmarks.layers`).", ""]
  layer_stage = stages["layers"]
  lines += ([f"Error: {layer_stage['error']}", ""] if "error" in layer_stage
            else _layer_lines(layer_stage))
  lines += ["## One CPAC seed swept `--vectorize`", ""]
  sweep = stages["sweep"]
  lines += ([f"Error: {sweep['error']}", ""] if "cpu" not in sweep
            else _sweep_lines(sweep))
  return "\n".join(lines).rstrip() + "\n"


def summary(run: dict) -> str:
  """The run's headline figures, for the benchmarks' README."""
  stages = {r["stage"]: r for r in run["rows"]}
  tests, layer_stage, sweep = (stages[s] for s in ("tests", "layers",
                                                    "sweep"))
  counts = ", ".join(f"{n} {kind}"
                     for kind, n in tests.get("counts", {}).items())
  lines = [f"- Fast tests: {counts or tests.get('error', 'no summary')} in "
           f"{tests['seconds']:.0f} s."]
  if "rows" in layer_stage:
    lines += [f"- Layers against the device's dense: {line}"
              for line in _layer_lines(layer_stage)
              if line.startswith("`auto` took")]
  if "vs_cpu" in sweep:
    lines.append(
        f"- One CPAC seed swept `--vectorize` ({sweep['runs']} runs, "
        f"{sweep['epochs']} epochs): {sweep['wall_seconds']:.0f} s, "
        f"{sweep['vs_cpu']:.3f}x the committed {sweep['cpu']['cpu_count']}-"
        f"CPU time prorated ({sweep['cpu']['prorated_seconds']:.0f} s).")
  return "\n".join(lines)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; flags only")
  # Before JAX starts a backend here or in the stages' processes: the
  # device's memory is shared, not taken whole by the first process.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  if _DRY_RUN.value:
    harness.small_run("accelerator_dry_run_", DRY_REPEATS)
  harness.run(sys.modules[__name__])


if __name__ == "__main__":
  app.run(main)
