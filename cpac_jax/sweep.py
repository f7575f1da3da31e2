"""Expand a config's sweep, run what results.csv doesn't hold yet, report.

A config's `sweep` is a sequence of groups; each group maps dotted config
fields to lists of values and stands for their cartesian product:

  config.sweep = (
      {"model.factorization": ["cp"], "model.rank": [1, 2, 3], "seed": [0, 1]},
      {"model.factorization": ["dense"], "seed": [0, 1]},
  )

Each run is keyed by a hash of its resolved config, trains in
`<workdir>/runs/<name>-<key>/`, and adds one row to `<workdir>/results.csv`
when it finishes; a run whose loss turns non-finite gets a row with status
"diverged" and the sweep goes on. Killed at any point and rerun, the sweep
skips the runs already there and resumes the interrupted one from its last
checkpoint; results.csv is replaced whole on each write, never torn.

  python -m cpac_jax.sweep --config=configs/cpac_mnist.py \
      --workdir=experiments/cpac_mnist [--vectorize] [--shard=i/n]
"""

import itertools
import sys
import time
from pathlib import Path

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from cpac_jax import data, report, train, vectorized
from cpac_jax.config import OPTIONAL_FIELDS, run_key, validate

__all__ = ["COLUMNS", "expand", "override", "run_sweep", "shard_of"]

COLUMNS = ("experiment", "dataset", "model", "factorization", "rank",
           "params", "compression", "layer_params", "layer_compression",
           "seed", "epochs", "test_accuracy", "best_test_accuracy",
           "train_seconds", "status", "run", "key")


def override(config: ml_collections.ConfigDict, field: str, value) -> None:
  """Set a dotted `field` of `config` to `value`, whatever its type was (a
  CP rank may become a fraction); unknown fields raise ValueError."""
  *parents, leaf = field.split(".")
  node = config
  for parent in parents:
    if parent not in node:
      raise ValueError(f"sweep sets unknown config field {field!r}")
    node = node[parent]
  if leaf not in node and field not in OPTIONAL_FIELDS:
    raise ValueError(f"sweep sets unknown config field {field!r}")
  if isinstance(value, list):
    value = tuple(value)
  with node.ignore_type():
    node[leaf] = value


def expand(config: ml_collections.ConfigDict
           ) -> list[tuple[str, ml_collections.ConfigDict]]:
  """(name, config) for every run of the sweep; the config itself if none."""
  runs = []
  for group in config.sweep or ({},):
    fields = list(group)
    for values in itertools.product(*(group[f] for f in fields)):
      run = config.copy_and_resolve_references()
      for field, value in zip(fields, values):
        override(run, field, value)
      name = "-".join(f"{f.rsplit('.', 1)[-1]}={_text(v)}"
                      for f, v in zip(fields, values)) or "run"
      runs.append((name, run))
  return runs


def _text(value) -> str:
  if isinstance(value, (tuple, list)):
    return "x".join(map(str, value))
  return str(value)


def _append_row(path: Path, row: dict) -> None:
  """Add a row to a results file, rewritten whole (`report.write_rows`); in
  a multi-process job, only process 0 writes."""
  if jax.process_index() == 0:
    report.write_rows(path, report.read_csv(path) + [row], COLUMNS)


def shard_of(key: str, count: int) -> int:
  """The shard (0..count-1) a run belongs to: stable, from its key alone."""
  return int(key, 16) % count


def run_sweep(config: ml_collections.ConfigDict, workdir: str | Path,
              shard: tuple[int, int] = (0, 1), vectorize: bool = False
              ) -> list[dict]:
  """Run every run of `config`'s sweep (or of its `shard` (i, n): the runs
  whose key falls in shard i of n) not yet in the workdir's results files,
  then write the report. Returns all rows of the workdir.

  With `vectorize`, the runs train together as one compiled program
  (`cpac_jax.vectorized`; they may differ only in seed, rank and
  factorization), their rows written when all have finished; otherwise one
  after another, each row written as its run finishes.

  Shard i of n > 1 appends to `results-shard<i>of<n>.csv`, so machines can
  share a workdir or each keep their own; `report` merges every
  results*.csv it finds, by run key.
  """
  index, count = shard
  if not (isinstance(count, int) and count >= 1 and isinstance(index, int)
          and 0 <= index < count):
    raise ValueError(f"shard {index}/{count} is invalid; give i/n with "
                     "0 <= i < n")
  train.initialize_distributed(config)
  workdir = Path(workdir)
  runs = expand(config)
  for _, run in runs:  # every run's config is checked before any compute
    validate(run)
  mine = [(name, run, run_key(run)) for name, run in runs]
  mine = [r for r in mine if shard_of(r[2], count) == index]
  workdir.mkdir(parents=True, exist_ok=True)
  results = workdir / ("results.csv" if count == 1
                       else f"results-shard{index}of{count}.csv")
  done = {row["key"] for row in report.read_results(workdir)}
  start = time.perf_counter()
  if vectorize:
    pending = [r for r in mine if r[2] not in done]
    logging.info("%d of %d runs done already; training the other %d "
                 "together", len(mine) - len(pending), len(mine), len(pending))
    rows = vectorized.train_vectorized(
        [(run, workdir / "runs" / f"{name}-{key}") for name, run, key in
         pending], workdir / "vectorized")
    for (name, _, key), row in zip(pending, rows):
      _append_row(results, {**row, "run": name, "key": key})
  else:
    for i, (name, run, key) in enumerate(mine):
      if key in done:
        logging.info("[%d/%d] %s: done already, skipped", i + 1, len(mine),
                     name)
        continue
      logging.info("[%d/%d] %s", i + 1, len(mine), name)
      try:
        row = train.train_and_evaluate(run,
                                       workdir / "runs" / f"{name}-{key}")
      except train.Diverged as error:
        logging.error("%s diverged, recorded as failed: %s", name, error)
        row = train.failed_row(run)
      _append_row(results, {**row, "run": name, "key": key})
      done.add(key)
  logging.info("sweep finished in %.0f s", time.perf_counter() - start)
  if jax.process_index() == 0:
    report.write_report(workdir, config)
  return report.read_results(workdir)


def _main():
  config = config_flags.DEFINE_config_file("config", None, "experiment config")
  workdir = flags.DEFINE_string("workdir", None, "where results.csv goes")
  shard = flags.DEFINE_string(
      "shard", "0/1", "i/n: run only shard i of n of the sweep (0-based)")
  vectorize = flags.DEFINE_bool(
      "vectorize", False, "train the runs together as one compiled program "
      "(runs differing only in seed, rank and factorization)")

  def main(argv):
    del argv
    try:
      index, _, count = shard.value.partition("/")
      if not (index.isdigit() and count.isdigit()):
        raise ValueError(f"--shard={shard.value!r} is not of the form i/n")
      rows = run_sweep(config.value, workdir.value, (int(index), int(count)),
                       vectorize.value)
    except (ValueError, data.DataNotFoundError, train.Preempted) as error:
      sys.exit(f"error: {error}")  # one line, exit status 1
    print(f"{len(rows)} runs in {Path(workdir.value) / 'results.csv'}; "
          f"table in {Path(workdir.value) / 'results.md'}")

  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)


if __name__ == "__main__":  # flags only here: importing defines none
  _main()
