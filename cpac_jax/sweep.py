"""Run a config's sweep (`cpac_jax.config.expand`): what results.csv
doesn't hold yet, then the report.

Each run is keyed by a hash of its resolved config, trains in
`<workdir>/runs/<name>-<key>/`, and adds one row to `<workdir>/results.csv`
when it finishes; a run whose loss turns non-finite gets a row with status
"diverged" and the sweep goes on. Killed at any point and rerun, the sweep
skips the runs already there and resumes the interrupted one from its last
checkpoint; results.csv is replaced whole on each write, never torn.

  python -m cpac_jax.sweep --config=configs/cpac_mnist.py \
      --workdir=experiments/cpac_mnist [--vectorize] [--shard=i/n]
"""

import sys
import time
from pathlib import Path

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from cpac_jax import (
  cli,
  data,
  distributed,
  extensions,
  process,
  report,
  rundir,
  train,
)
from cpac_jax.config import (
  expand,
  has_teacher,
  run_key,
  teacher_config,
  validate,
)

__all__ = ["run_sweep", "shard_of"]


def shard_of(key: str, count: int) -> int:
  """The shard (0..count-1) a run belongs to: stable, from its key alone."""
  return int(key, 16) % count


def run_sweep(config: ml_collections.ConfigDict, workdir: str | Path,
              shard: tuple[int, int] = (0, 1), vectorize: bool = False
              ) -> list[dict]:
  """Run every run of `config`'s sweep (or of its `shard` (i, n): the runs
  whose key falls in shard i of n) not yet in the workdir's results files,
  then write the report. Returns all rows of the workdir.

  With `vectorize`, the runs of each seed train together as one compiled
  program (`cpac_jax.train.train_runs`; they may differ only in seed, rank,
  factorization and init), their rows written when the seed's runs have
  finished; otherwise one after another, each row written as its run
  finishes.

  Shard i of n > 1 appends to `results-shard<i>of<n>.csv`, so machines can
  share a workdir or each keep their own; `report` merges every
  results*.csv it finds, by run key.
  """
  index, count = shard
  if not (isinstance(count, int) and count >= 1 and isinstance(index, int)
          and 0 <= index < count):
    raise ValueError(f"shard {index}/{count} is invalid; give i/n with "
                     "0 <= i < n")
  if not str(workdir):
    raise ValueError("an empty workdir was given; name the folder the sweep "
                     "writes into")
  distributed.initialize(config)
  workdir = Path(workdir)
  runs = expand(config)
  for _, run in runs:  # every run's config is checked before any compute
    validate(run)
  every = [(name, run, run_key(run)) for name, run in runs]
  rundir.check_rows(workdir, runs)
  _check_teachers(every, count, vectorize)
  mine = [r for r in every if shard_of(r[2], count) == index]
  results = workdir / ("results.csv" if count == 1
                       else f"results-shard{index}of{count}.csv")
  # One process per results file; shards have their own and run side by side.
  with rundir.lock(workdir, f".{results.name}.lock"):
    _run_pending(workdir, results, mine, vectorize)
  if distributed.writes_files():
    report.write_report(workdir, config)
  return rundir.read_results(workdir)


def _check_teachers(every: list, count: int, vectorize: bool) -> None:
  """Refuse, before any compute, a run whose teacher is not an earlier run
  of the sweep (of the same shard), or runs that can't train together as
  --vectorize would train them, a seed at a time (`extensions.check`)."""
  if vectorize:
    seeds = {}
    for name, run, _ in every:
      seeds.setdefault(run.seed, []).append((name, run))
    for batch in seeds.values():
      extensions.check([run for _, run in batch], together=len(batch) > 1,
                       names=[name for name, _ in batch])
  order = {key: i for i, (_, _, key) in enumerate(every)}
  for i, (name, run, key) in enumerate(every):
    if not has_teacher(run):
      continue
    teacher = run_key(teacher_config(run))
    if order.get(teacher, len(every)) >= i:
      raise ValueError(
          f"run {name}: its teacher ({run.teacher!r}, key {teacher}) is not "
          "an earlier run of this sweep; add its config to a sweep group "
          "before this one")
    if count > 1 and shard_of(teacher, count) != shard_of(key, count):
      raise ValueError(
          f"run {name} and its teacher fall in different shards of "
          f"{count}; run this sweep unsharded")


def _run_pending(workdir: Path, results: Path, mine: list, vectorize: bool
                 ) -> None:
  """Train the runs of `mine` (name, config, key) that no results file of
  `workdir` holds yet, adding their rows to `results`."""
  done = {row["key"] for row in rundir.read_results(workdir)}
  pending = [r for r in mine if r[2] not in done]
  start = time.perf_counter()
  # Together: the runs of a seed share every batch, so each seed's pending
  # runs are one program (its rows land when it ends); else one run each.
  batches = {}
  for r in pending:
    batches.setdefault(r[1].seed if vectorize else r[2], []).append(r)
  batches = list(batches.values())
  logging.info("%d of %d runs done already; training the other %d%s",
               len(mine) - len(pending), len(mine), len(pending),
               " together, a seed at a time" if vectorize
               else " one at a time")
  for i, batch in enumerate(batches):
    logging.info("[%d/%d] %s", i + 1, len(batches),
                 f"seed {batch[0][1].seed}: {len(batch)} runs" if vectorize
                 else batch[0][0])
    outcomes = train.train_runs(
        [(run, workdir / "runs" / f"{name}-{key}") for name, run, key in batch],
        workdir / "vectorized")
    for (name, _, key), outcome in zip(batch, outcomes):
      if outcome.error is not None:
        logging.error("%s diverged, recorded as failed: %s", name,
                      outcome.error)
    # A batch's rows land in one write: a kill leaves all of them or none,
    # so a rerun trains the same batch again, never a part of it.
    rundir.append_rows(results, [{**o.row, "run": name, "key": key}
                                 for (name, _, key), o in zip(batch,
                                                              outcomes)])
  logging.info("sweep finished in %.0f s", time.perf_counter() - start)


def _main():
  process.restart_with_huge_pages()  # before anything: glibc reads it at start
  config = config_flags.DEFINE_config_file("config", None, "experiment config")
  workdir = flags.DEFINE_string("workdir", None, "where results.csv goes")
  shard = flags.DEFINE_string(
      "shard", "0/1", "i/n: run only shard i of n of the sweep (0-based)")
  vectorize = flags.DEFINE_bool(
      "vectorize", False, "train the runs together as one compiled program "
      "(runs differing only in seed, rank and factorization)")

  def main(argv):
    del argv
    process.reuse_host_memory()
    try:
      index, _, count = shard.value.partition("/")
      if not (index.isdigit() and count.isdigit()):
        raise ValueError(f"--shard={shard.value!r} is not of the form i/n")
      rows = run_sweep(config.value, workdir.value, (int(index), int(count)),
                       vectorize.value)
    except (ValueError, OSError, data.DataNotFoundError,
            train.Preempted, KeyboardInterrupt) as error:
      sys.exit(cli.error_line(error))  # one line, exit status 1
    print(f"{len(rows)} runs in {Path(workdir.value) / 'results.csv'}; "
          f"table in {Path(workdir.value) / 'results.md'}")

  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":  # flags only here: importing defines none
  _main()
