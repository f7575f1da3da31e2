"""What a run leaves on disk, and the results files of a sweep.

A run's workdir holds `config.json` (the config it ran), `metrics.jsonl`
and TensorBoard events (one line per epoch), `checkpoints/`
(`cpac_jax.checkpoint`) and, once finished, `result.json`: its results row.
A sweep's workdir holds the rows of all its runs in `results.csv` (or
`results-shard<i>of<n>.csv`), columns `COLUMNS`, each file rewritten whole
on every write so a kill never leaves a torn line.
"""

import contextlib
import csv
import fcntl
import io
import json
import os
import tempfile
from pathlib import Path

import ml_collections

from cpac_jax import distributed
from cpac_jax.config import (
  compress_budget,
  compressing,
  describe_differences,
  differing_fields,
  run_key,
  setting,
)

__all__ = ["COLUMNS", "MetricWriter", "append_row", "append_rows",
           "check_config", "check_rows", "evaluated_on", "failed_row",
           "history", "lock", "read_config", "read_csv", "read_results",
           "result_row", "write_config", "write_result", "write_rows"]

COLUMNS = ("experiment", "dataset", "model", "factorization", "rank", "init",
           "params", "compression", "layer_params", "layer_compression",
           "seed", "epochs", "evaluated_on", "test_accuracy",
           "best_test_accuracy", "best_epoch", "test_loss", "train_seconds",
           "trained", "status", "run", "key")
# "trained": "alone", or "vectorized (N runs)" for a run trained in one
# program with others (--vectorize): the two sum in other orders, so the
# same run's numbers differ between them in about the 4th decimal.


# --- One run's workdir -------------------------------------------------------


def write_config(workdir: Path, config: ml_collections.ConfigDict) -> None:
  if distributed.writes_files():
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))


def read_config(workdir: str | Path) -> ml_collections.ConfigDict:
  path = Path(workdir) / "config.json"
  try:
    return ml_collections.ConfigDict(json.loads(path.read_text()))
  except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as error:
    raise ValueError(
        f"{path} is damaged ({error}); delete it to let this run's config "
        "write it again (the checkpoints record which run they are)"
    ) from None


def check_config(workdir: Path, config: ml_collections.ConfigDict) -> None:
  """Refuse a workdir that holds a run of a different config."""
  if not (workdir / "config.json").exists():
    return
  if differing_fields(read_config(workdir), config):
    raise ValueError(
        f"workdir {workdir} holds a run of a different config (differing: "
        f"{describe_differences(read_config(workdir), config)}); resume it "
        "with the same config, or use a new workdir")


class MetricWriter:
  """Per-epoch metrics to metrics.jsonl and TensorBoard event files."""

  def __init__(self, workdir: Path):
    from tensorboardX import SummaryWriter  # slow import: only when writing

    self._path = workdir / "metrics.jsonl"
    self._tensorboard = SummaryWriter(str(workdir / "tensorboard"))

  def write(self, step: int, metrics: dict) -> None:
    with open(self._path, "a") as f:
      f.write(json.dumps({"step": step, **metrics}) + "\n")
    for name, value in metrics.items():
      self._tensorboard.add_scalar(name, value, step)
    self._tensorboard.flush()

  def close(self) -> None:
    self._tensorboard.close()


def history(workdir: Path, up_to_epoch: int, complete: bool = True
            ) -> list[dict]:
  """The metrics of epochs 1..`up_to_epoch`; metrics.jsonl is cut back to
  them, dropping any epoch written after the checkpoint now resumed. Not
  `complete` (a run that diverged while others trained on), it may stop
  earlier."""
  path = workdir / "metrics.jsonl"
  lines = (path.read_text(errors="replace").splitlines() if path.exists()
           else [])
  rows = []
  for number, line in enumerate(lines, start=1):
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      if number < len(lines):
        raise ValueError(
            f"{path} line {number} is damaged; delete the run's workdir "
            "to train it again") from None
      # The last line, cut by a kill: epochs past the checkpoint resumed
      # now are dropped below anyway.
  kept = [r for r in rows if r["epoch"] <= up_to_epoch]
  epochs = [r["epoch"] for r in kept]
  if epochs != list(range(1, (up_to_epoch if complete else len(kept)) + 1)):
    raise ValueError(
        f"{path} lacks the metrics of epochs the checkpoint has trained "
        f"(1..{up_to_epoch}); delete the run's workdir to train it again")
  if len(kept) != len(lines) and distributed.writes_files():
    temp = path.with_suffix(".tmp")
    temp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(temp, path)
  return kept


def write_result(workdir: Path, row: dict) -> None:
  if distributed.writes_files():
    (workdir / "result.json").write_text(json.dumps(row, indent=2))


# --- Results rows ------------------------------------------------------------


def failed_row(config: ml_collections.ConfigDict) -> dict:
  """The results row of a run whose loss became non-finite."""
  return {"experiment": config.get("name", ""),
          "dataset": config.dataset.name, "model": config.model.name,
          "factorization": config.model.factorization,
          "init": setting(config, "model.init"), "seed": config.seed,
          "epochs": config.num_epochs,
          "evaluated_on": evaluated_on(config), "status": "diverged"}


def evaluated_on(config: ml_collections.ConfigDict) -> str:
  """The split a run's epochs are evaluated on: "validation" (held out of
  the training set) or "test"."""
  return ("validation" if setting(config, "dataset.validation_examples")
          else "test")


def result_row(config: ml_collections.ConfigDict, counts: dict,
               epochs: list[dict]) -> dict:
  """A finished run's results row, from its parameter counts
  (`models.parameter_counts`) and per-epoch metrics: test accuracy and
  loss after the last epoch, and the best test accuracy with its epoch;
  "evaluated_on" says whether "test" meant the test set or the validation
  examples held out of training (`dataset.validation_examples`)."""
  rank = config.model.rank
  best = max(epochs, key=lambda r: r["test_accuracy"])  # the first best
  what = {"factorization": config.model.factorization,
          "rank": ("" if config.model.factorization == "dense" else json.dumps(
              list(rank) if isinstance(rank, tuple) else rank)),
          "init": setting(config, "model.init")}
  if compressing(config):
    # A compressed teacher: the rank column says how the budget was shared.
    block = config.compress
    what = {"factorization": block.factorization,
            "rank": json.dumps(f"{block.allocation} "
                               f"{compress_budget(block)}"),
            "init": ("compressed" if block.init == "decomposed"
                     else "scratch")}
  return {
      "experiment": config.get("name", ""),
      "dataset": config.dataset.name,
      "model": config.model.name,
      **what,
      **counts,
      "seed": config.seed,
      "epochs": config.num_epochs,
      "evaluated_on": evaluated_on(config),
      "test_accuracy": epochs[-1]["test_accuracy"],
      "best_test_accuracy": best["test_accuracy"],
      "best_epoch": best["epoch"],
      "test_loss": epochs[-1]["test_loss"],
      "train_seconds": sum(r["epoch_seconds"] for r in epochs),
      "status": "ok",
  }


# --- Results files -----------------------------------------------------------


def read_csv(path: str | Path) -> list[dict]:
  path = Path(path)
  if not path.exists():
    return []
  with open(path, newline="") as f:
    text = f.read()
  rows = list(csv.DictReader(io.StringIO(text)))
  # Written whole, every row ends in a newline and has the header's fields.
  torn = [i for i, row in enumerate(rows, start=2)
          if None in row or None in row.values()]
  if text and not text.endswith("\n"):
    torn.append(len(text.splitlines()))
  if torn:
    raise ValueError(
        f"{path} line {torn[0]} is torn (cut short or damaged, not as this "
        "code writes it): delete that line (its run is trained again) and "
        "rerun")
  return rows


def write_rows(path: Path, rows: list[dict], columns=COLUMNS) -> None:
  """Write a CSV whole: to a temp file, then renamed over `path`, so a kill
  never leaves a torn line."""
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
  writer.writeheader()
  writer.writerows(rows)
  handle, temp = tempfile.mkstemp(dir=path.parent, prefix=".results-")
  with os.fdopen(handle, "w", newline="") as f:
    f.write(buffer.getvalue())
  os.replace(temp, path)


def append_row(path: Path, row: dict) -> None:
  """Add a row to a results file, rewritten whole; in a multi-process job,
  only process 0 writes."""
  append_rows(path, [row])


def append_rows(path: Path, rows: list[dict]) -> None:
  """Add `rows` to a results file in one write: all of them or none."""
  if distributed.writes_files():
    write_rows(path, read_csv(path) + list(rows))


@contextlib.contextmanager
def lock(folder: Path, name: str = ".lock"):
  """Hold `folder`/`name` for this process alone while the block runs; the
  system drops the lock when the process ends, however it ends.

  In a multi-process job only the writing process locks: the others work
  in the same folders by design.

  Raises:
    ValueError: another process holds it.
  """
  if not distributed.writes_files():
    yield
    return
  folder.mkdir(parents=True, exist_ok=True)
  path = folder / name
  with open(path, "a+") as handle:
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.seek(0)
      holder = handle.read().strip() or "?"
      raise ValueError(
          f"another process (pid {holder}) is running in {folder}; wait for "
          "it to end, or use another workdir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)


def check_rows(workdir: str | Path,
               runs: list[tuple[str, ml_collections.ConfigDict]]) -> None:
  """Refuse a workdir whose results hold runs outside `runs` (its config's
  sweep, as (name, config)): another config's workdir, or a config changed
  since. The message names the fields that differ and their two values,
  from the first such run's config.json, against the sweep's run of the
  same name (or the closest one)."""
  keys = {run_key(run) for _, run in runs}
  foreign = [row for row in read_results(workdir) if row["key"] not in keys]
  if not foreign:
    return
  first = foreign[0]
  saved = Path(workdir) / "runs" / f"{first.get('run')}-{first['key']}"
  if (saved / "config.json").exists():
    there = read_config(saved)
    _, here = min(runs, key=lambda r: (r[0] != first.get("run"), len(
        differing_fields(there, r[1]))))
    why = f"differing: {describe_differences(there, here)}"
  else:
    why = "its config.json is gone, so what differs is not known"
  raise ValueError(
      f"{workdir} holds {len(foreign)} results of runs that are not in "
      f"this config's sweep (the first: {first.get('run')!r}, key "
      f"{first['key']}; {why}): it is another config's workdir, or the "
      "config changed since; use that config, another workdir, or move "
      "those rows out of its results*.csv")


def read_results(workdir: str | Path) -> list[dict]:
  """Rows of every results*.csv in `workdir` (results.csv first, then the
  shards' files), one per run key."""
  workdir = Path(workdir)
  files = sorted(workdir.glob("results*.csv"),
                 key=lambda p: (p.name != "results.csv", p.name))
  rows, seen = [], set()
  for path in files:
    for row in read_csv(path):
      if row["key"] not in seen:
        seen.add(row["key"])
        rows.append(row)
  return rows
