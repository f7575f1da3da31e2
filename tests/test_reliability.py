"""Runs that resume exactly, sweeps that survive kills, clear config errors,
and a guard against divergence."""

import csv
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from cpac_jax import cli, data, report, rundir, sweep, train
from cpac_jax import config as config_lib
from tests.conftest import load_config

ROOT = Path(__file__).resolve().parents[1]


def small_config(data_dir, **overrides):
  config = load_config("cpac_mnist")
  config.dataset.data_dir = str(data_dir)
  config.num_epochs = 3
  config.batch_size = 8
  config.steps_per_call = 8  # 64 steps an epoch: 8 chunks to stop between
  config.optimizer.learning_rate = 3e-3
  for field, value in overrides.items():
    config_lib.override(config, field, value)
  return config


def params_of(workdir):
  model, _ = train.restore(workdir)
  return jax.tree.leaves(nnx.state(model, nnx.Param))


def assert_same_bits(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def main_command(config_path, workdir, data_dir, *flags):
  return [sys.executable, "-m", "cpac_jax.main", f"--config={config_path}",
          f"--workdir={workdir}", f"--config.dataset.data_dir={data_dir}",
          "--config.num_epochs=3", "--config.batch_size=8",
          "--config.steps_per_call=8", "--config.optimizer.learning_rate=0.003",
          *flags]


@pytest.fixture(scope="module")
def uninterrupted(shared_mnist_dir, tmp_path_factory):
  """The reference run the resumed ones must match, trained once."""
  workdir = tmp_path_factory.mktemp("uninterrupted")
  row = train.train_and_evaluate(small_config(shared_mnist_dir), workdir)
  return workdir, row


def test_sigterm_saves_and_the_rerun_matches_bit_for_bit(mnist_dir, tmp_path,
                                                         uninterrupted):
  workdir = tmp_path / "preempted"
  config = small_config(mnist_dir)
  timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
  timer.start()
  with pytest.raises(train.Preempted, match="rerun the same command"):
    train.train_and_evaluate(config, workdir)
  timer.cancel()
  resumed = train.train_and_evaluate(config, workdir)
  assert_same_bits(params_of(workdir), params_of(uninterrupted[0]))
  expected = uninterrupted[1]
  for field in ("test_accuracy", "best_test_accuracy", "params"):
    assert resumed[field] == expected[field]
  epochs = [json.loads(line)["epoch"] for line in
            (workdir / "metrics.jsonl").read_text().splitlines()]
  assert epochs == [1, 2, 3]


def _wait_for_a_checkpoint(process, workdir, seconds=120):
  """Until the run in `process` has saved its first checkpoint (or ended,
  or `seconds` passed)."""
  deadline = time.time() + seconds
  checkpoints = workdir / "checkpoints"
  while time.time() < deadline and process.poll() is None and not (
      checkpoints.exists() and any(p.name.isdigit()
                                   for p in checkpoints.iterdir())):
    time.sleep(0.05)


def test_kill_9_then_rerun_ends_with_the_same_parameters(mnist_dir, tmp_path,
                                                         uninterrupted):
  config_path = ROOT / "configs" / "cpac_mnist.py"
  workdir = tmp_path / "killed"
  command = main_command(config_path, workdir, mnist_dir)
  process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  _wait_for_a_checkpoint(process, workdir)
  time.sleep(0.3)  # somewhere into the next epoch
  process.kill()  # SIGKILL: no chance to save
  process.wait()
  finished = subprocess.run(command, cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
  assert finished.returncode == 0, finished.stderr[-2000:]
  assert_same_bits(params_of(workdir), params_of(uninterrupted[0]))


def test_ctrl_c_is_one_line_with_the_command_that_resumes(
    mnist_dir, tmp_path, uninterrupted):
  """Ctrl-C (SIGINT) mid-run saves, stops with one line naming where and
  the command to rerun; that command finishes with the same bits."""
  workdir = tmp_path / "interrupted"
  command = main_command(ROOT / "configs" / "cpac_mnist.py", workdir,
                         mnist_dir)
  process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
  _wait_for_a_checkpoint(process, workdir)
  process.send_signal(signal.SIGINT)
  stderr = process.communicate(timeout=120)[1]
  assert process.returncode == 1
  assert "Traceback" not in stderr, stderr[-2000:]
  line = stderr.strip().splitlines()[-1]
  found = re.fullmatch(r"error: Ctrl-C: saved epoch \d+(, step \d+)? of "
                       r"\S+; rerun the same command to resume \((.+)\)",
                       line)
  assert found, line
  again = shlex.split(found.group(2))
  assert again[:3] == ["python", "-m", "cpac_jax.main"]
  finished = subprocess.run([sys.executable] + again[1:], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
  assert finished.returncode == 0, finished.stderr[-2000:]
  assert_same_bits(params_of(workdir), params_of(uninterrupted[0]))


def test_ctrl_c_outside_the_loop_says_how_to_resume(monkeypatch):
  monkeypatch.setattr(sys, "argv", [str(ROOT / "cpac_jax" / "sweep.py"),
                                    "--config=a b.py", "--workdir=w"])
  assert cli.error_line(KeyboardInterrupt()) == (
      "error: Ctrl-C: stopped; rerun the same command to resume from the "
      "last checkpoint (python -m cpac_jax.sweep '--config=a b.py' "
      "--workdir=w)")


def test_same_config_and_seed_give_the_same_results(mnist_dir, tmp_path,
                                                    uninterrupted):
  again = train.train_and_evaluate(small_config(mnist_dir), tmp_path / "again")
  first = uninterrupted[1]
  assert {k: v for k, v in again.items() if k != "train_seconds"} == {
      k: v for k, v in first.items() if k != "train_seconds"}
  assert_same_bits(params_of(tmp_path / "again"), params_of(uninterrupted[0]))


def test_divergence_stops_at_once_naming_the_step(mnist_dir, tmp_path):
  config = small_config(mnist_dir, **{"optimizer.learning_rate": 1e30,
                                      "optimizer.name": "sgd"})
  with pytest.raises(train.Diverged, match=r"epoch 1, step \d+"):
    train.train_and_evaluate(config, tmp_path / "run")
  assert not (tmp_path / "run" / "result.json").exists()


def test_sweep_records_a_diverged_run_and_goes_on(mnist_dir, tmp_path):
  config = small_config(mnist_dir, num_epochs=1)
  config.sweep = ({"optimizer.learning_rate": [1e30, 3e-3],
                   "optimizer.name": ["sgd"]},)
  rows = sweep.run_sweep(config, tmp_path)
  assert [r["status"] for r in rows] == ["diverged", "ok"]
  assert rows[0]["test_accuracy"] == ""
  text = (tmp_path / "results.md").read_text()
  assert "diverged, left out of the table" in text
  assert text.count("| cp | 5 |") == 1  # only the finished run is averaged


def test_vectorized_sweep_records_diverged_runs(mnist_dir, tmp_path):
  config = small_config(mnist_dir, num_epochs=1,
                        **{"optimizer.learning_rate": 1e30,
                           "optimizer.name": "sgd"})
  config.sweep = ({"model.rank": [1, 3]},)
  with pytest.raises(ValueError, match="holds no finished runs to report"):
    sweep.run_sweep(config, tmp_path, vectorize=True)
  rows = rundir.read_results(tmp_path)
  assert [r["status"] for r in rows] == ["diverged", "diverged"]
  assert not list((tmp_path / "runs").glob("*/result.json"))


def test_workdir_of_another_config_is_refused(mnist_dir, tmp_path):
  train.train_and_evaluate(small_config(mnist_dir, num_epochs=1),
                           tmp_path / "run")
  with pytest.raises(ValueError,
                     match=r"differing: model.rank \(5 there, 3 here\)"):
    train.train_and_evaluate(
        small_config(mnist_dir, num_epochs=1, **{"model.rank": 3}),
        tmp_path / "run")


BAD_CONFIGS = [
    ({"dataset.name": "mnsit"}, "did you mean 'mnist'"),
    ({"model.name": "cpac_cnn2"}, "did you mean 'cpac_cnn_2'"),
    ({"model.factorization": "tuker"}, "takes model.factorization"),
    ({"optimizer.name": "adma"}, "did you mean 'adam'"),
    ({"model.rank": 0}, "CP rank 0"),
    ({"model.rank": "five"}, "'same'"),
    ({"model.rank": 1.5}, r"\(0, 1\]"),
    ({"batch_size": 0}, "batch_size must be a positive int"),
    ({"num_epochs": 2.5}, "num_epochs must be a positive int"),
    ({"optimizer.learning_rate": -1.0}, "learning_rate must be a positive"),
    ({"optimizer.learning_rate": float("inf")},
     "learning_rate must be a positive finite number, got inf"),
    ({"dataset.std": 0.0}, "dataset.std must be finite and positive"),
    ({"dataset.mean": float("nan")}, "dataset.mean must be finite"),
    ({"optimizer.schedule": "linear"}, "unknown optimizer.schedule"),
    ({"dtype": "float64"}, r"unknown dtype 'float64'.*; choose one of "
     r"\('float32', 'bfloat16', 'float16'\)"),
]


@pytest.mark.parametrize("overrides,match", BAD_CONFIGS)
def test_bad_configs_are_caught_before_any_compute(overrides, match, tmp_path):
  config = small_config(tmp_path / "no-data", **overrides)
  start = time.perf_counter()
  with pytest.raises(ValueError, match=match):
    train.train_and_evaluate(config, tmp_path / "run")
  assert time.perf_counter() - start < 5
  assert not (tmp_path / "run").exists()


def test_ttl_shapes_that_dont_match_the_input_are_caught(tmp_path):
  config = load_config("ttl_mnist")
  config.model.kwargs = {"in_shape": (28, 27)}
  with pytest.raises(ValueError, match=r"in_shape \(28, 27\) holds 756"):
    config_lib.validate(config)
  config.model.kwargs = {"in_shape": (4, 7, 28)}
  with pytest.raises(ValueError, match="3 entries"):
    config_lib.validate(config)  # rank (5, 5, 10) has 3 modes, not 4


@pytest.mark.slow
def test_main_exits_nonzero_with_one_clear_line(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "cpac_jax.main",
       f"--config={ROOT / 'configs' / 'cpac_mnist.py'}",
       f"--workdir={tmp_path / 'run'}", "--config.model.name=cpac_cnn3"],
      cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: unknown model.name 'cpac_cnn3'")
  assert "Traceback" not in result.stderr


def test_a_torn_results_row_is_refused_naming_its_line(tmp_path):
  path = tmp_path / "results.csv"
  for key in ("aaaaaaaaaaaa", "bbbbbbbbbbbb"):
    rundir.append_row(path, {"experiment": "a", "key": key, "status": "ok"})
  whole = path.read_bytes()
  short_row = whole.rstrip().rsplit(b",", 2)[0] + b"\r\n"  # 2 fields lost
  for torn in (whole[:-10], short_row):  # `truncate -s -10`; a short row
    path.write_bytes(torn)
    with pytest.raises(ValueError, match="results.csv line 3 is torn"):
      rundir.read_results(tmp_path)


def test_a_workdir_of_another_sweep_is_refused(mnist_dir, tmp_path):
  one = small_config(mnist_dir, num_epochs=1)
  one.sweep = ({"model.rank": [2], "seed": [0]},)
  sweep.run_sweep(one, tmp_path / "sweep")
  two = small_config(mnist_dir, num_epochs=2)
  two.sweep = one.sweep
  start = time.perf_counter()
  for run in (lambda: sweep.run_sweep(two, tmp_path / "sweep"),
              lambda: report.write_report(tmp_path / "sweep", two)):
    with pytest.raises(ValueError, match=r"not in this config's sweep .*"
                       r"differing: num_epochs \(1 there, 2 here\)\)"):
      run()
  assert time.perf_counter() - start < 20
  with pytest.raises(ValueError, match="empty workdir"):
    sweep.run_sweep(one, "")
  with pytest.raises(ValueError, match="empty workdir"):
    train.train_and_evaluate(one, "")


def test_labels_outside_the_classes_name_the_file(mnist_dir):
  from tests.conftest import write_idx

  labels = mnist_dir / "mnist" / "train-labels-idx1-ubyte.gz"
  write_idx(labels, np.full(512, 12))
  with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte.gz holds "
                     r"label 12, outside mnist's classes 0..9"):
    data.load("mnist", "train", mnist_dir)


COMMAND_LINE_ERRORS = [
    ("configs/nope.py", [], "No such file or directory: 'configs/nope.py'"),
    ("configs/cpac_mnist.py:nopreset", [], "unknown preset 'nopreset'"),
    ("configs/cpac_mnist.py", ["--config.modle.rank=3"],
     "unknown config field 'modle'; did you mean 'model'?"),
    ("configs/cpac_mnist.py", ["--config.num_epoch=1"],
     "unknown config field 'num_epoch' in --config.num_epoch; did you mean "
     "'num_epochs'?"),
    ("configs/ttl_mnist.py", ["--config.optimizer.learning_rat=0.1"],
     "unknown config field 'learning_rat' in --config.optimizer."
     "learning_rat; did you mean 'learning_rate'?"),
    # every rank spec reaches the layers (here num_epochs=0 stops the run)
    ("configs/cpac_mnist.py", ["--config.model.rank=0.5"], "num_epochs"),
    ("configs/ttl_mnist.py", ["--config.model.rank=0.1"], "num_epochs"),
    ("configs/ttl_mnist.py", ["--config.model.rank=same"], "num_epochs"),
    ("configs/ttl_mnist.py", ["--config.model.rank=(3, 3, 4)"], "num_epochs"),
    ("configs/cpac_mnist.py", ["--config.model.rank", "0.5"], "num_epochs"),
    ("configs/cpac_mnist.py", ["--config.model.rank=zero"],
     "CP rank 'zero' is not a valid spec"),
    # an optional field, settable on every config, refused where it means
    # nothing there
    ("configs/ttl_mnist.py", ["--config.dataset.validation_examples=100",
                              "--config.optimizer.schedule=cosine"],
     "num_epochs"),
    ("configs/ttl_mnist.py", ["--config.model.init=official"],
     "model 'ttl_mlp' takes model.init in ('default', 'teacher'), got "
     "'official'"),
]


@pytest.mark.slow
@pytest.mark.parametrize("config,flags,message", COMMAND_LINE_ERRORS)
def test_command_line_errors_are_one_line(config, flags, message, tmp_path):
  extra = [] if message != "num_epochs" else ["--config.num_epochs=0"]
  result = subprocess.run(
      [sys.executable, "-m", "cpac_jax.main", f"--config={config}",
       f"--workdir={tmp_path / 'run'}", *flags, *extra],
      cwd=ROOT, capture_output=True, text=True, timeout=60)
  # A mistake in the flags themselves is a usage error (2); one that
  # validate finds in the config they make, as any run's error (1).
  found_by_validate = message == "num_epochs" or any(
      text in message for text in ("takes model.init", "not a valid spec"))
  assert result.returncode == (1 if found_by_validate else 2)
  assert "Traceback" not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and message in last, last


BAD_CONFIG_FILES = [
    ("def get_config(:\n  pass\n", "SyntaxError at line 1"),
    ("x = 1\n", "it defines no get_config()"),
    ("def get_config():\n  raise RuntimeError('boom')\n",
     "RuntimeError: boom"),
    ("def get_config():\n  return 5\n",
     "get_config() returned an object of type int, not an "
     "ml_collections.ConfigDict"),
]


@pytest.mark.slow
@pytest.mark.parametrize("text,message", BAD_CONFIG_FILES)
def test_a_config_file_that_fails_is_one_line_naming_it(text, message,
                                                        tmp_path):
  config = tmp_path / "bad.py"
  config.write_text(text)
  result = subprocess.run(
      [sys.executable, "-m", "cpac_jax.main", f"--config={config}",
       f"--workdir={tmp_path / 'run'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert "Traceback" not in result.stderr, result.stderr
  assert lines[-1] == f"error: config file {config}: {message}" or (
      lines[-1].startswith(f"error: config file {config}: {message}"))


@pytest.mark.slow
def test_one_process_at_a_time_and_a_killed_one_leaves_no_lock(tmp_path):
  with rundir.lock(tmp_path):
    with pytest.raises(ValueError, match=f"pid {os.getpid()}.* is running in"):
      with rundir.lock(tmp_path):
        pass
  holder = subprocess.Popen(
      [sys.executable, "-c", "import time\nfrom pathlib import Path\n"
       "from cpac_jax import rundir\n"
       f"with rundir.lock(Path({str(tmp_path)!r})):\n"
       "  print('locked', flush=True)\n  time.sleep(60)"],
      stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "locked"
  with pytest.raises(ValueError, match=f"pid {holder.pid}"):
    with rundir.lock(tmp_path):
      pass
  holder.kill()  # kill -9: the system drops its lock
  holder.wait()
  with rundir.lock(tmp_path):
    pass


def test_checkpoints_of_another_config_are_refused(mnist_dir, tmp_path):
  train.train_and_evaluate(small_config(mnist_dir, num_epochs=1),
                           tmp_path / "run")
  (tmp_path / "run" / "config.json").unlink()
  with pytest.raises(ValueError, match="holds checkpoints of another config"):
    train.train_and_evaluate(
        small_config(mnist_dir, num_epochs=1,
                     **{"optimizer.learning_rate": 1e-3}), tmp_path / "run")


def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(
    uninterrupted, tmp_path, shared_mnist_dir):
  reference, row = uninterrupted
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  latest = max((workdir / "checkpoints").glob("[0-9]*"),
               key=lambda p: int(p.name))
  for file in latest.rglob("*"):
    if file.is_file():
      file.write_bytes(b"\0" * file.stat().st_size)  # zero-filled
  lines = []
  again = train.train_and_evaluate(small_config(shared_mnist_dir), workdir,
                                   progress=lines.append)
  assert any("does not read back" in line for line in lines), lines
  assert again["test_accuracy"] == row["test_accuracy"]
  assert_same_bits(params_of(workdir), params_of(reference))


def test_no_readable_checkpoint_is_one_line_naming_step_and_file(
    uninterrupted, tmp_path, shared_mnist_dir, capfd, caplog):
  """Truncated array files in every step: one error naming the last step
  tried, its file and what to do; none of the ~1,400 lines of stray read
  errors the failed restores leave behind."""
  import gc  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  shutil.copytree(uninterrupted[0], workdir)
  for file in (workdir / "checkpoints").glob("[0-9]*/**/d/*"):
    os.truncate(file, 5)
  lines = []
  with pytest.raises(ValueError) as stopped:
    train.train_and_evaluate(small_config(shared_mnist_dir), workdir,
                             progress=lines.append)
  gc.collect()
  time.sleep(0.5)  # the stray reads' callbacks run on tensorstore's threads
  gc.collect()
  line = cli.error_line(stopped.value)
  assert re.fullmatch(r"error: no checkpoint in \S+ reads back \(the last "
                      r"tried, step \d+: \S+ reading \S+/\d+/default/\); "
                      r"delete \S+ to start the run afresh", line), line
  assert "does not read back" in lines[0] and len(lines) == 1, lines
  assert "Traceback" not in capfd.readouterr().err
  assert not [r for r in caplog.records if r.name == "asyncio"]


def test_a_full_disk_stops_before_the_save_and_the_rerun_resumes(
    uninterrupted, tmp_path, shared_mnist_dir, monkeypatch):
  reference, row = uninterrupted
  workdir = tmp_path / "run"
  real = shutil.disk_usage
  calls = []

  def usage(path):  # room for the first epoch's checkpoint, then none
    calls.append(path)
    found = real(path)
    return found._replace(free=found.free if len(calls) < 2 else 4096)

  monkeypatch.setattr(shutil, "disk_usage", usage)
  with pytest.raises(OSError, match="No space left on device") as stopped:
    train.train_and_evaluate(small_config(shared_mnist_dir), workdir)
  assert "free some space and rerun" in cli.error_line(stopped.value)
  steps = [p.name for p in (workdir / "checkpoints").iterdir()
           if not p.name.endswith(".txt")]
  assert steps == ["64"], steps  # epoch 1's, whole; no torn step beside it
  monkeypatch.setattr(shutil, "disk_usage", real)
  again = train.train_and_evaluate(small_config(shared_mnist_dir), workdir)
  assert again["test_accuracy"] == row["test_accuracy"]
  assert_same_bits(params_of(workdir), params_of(reference))


def test_damaged_run_files_resume_or_are_named(uninterrupted, tmp_path,
                                               shared_mnist_dir):
  reference, row = uninterrupted
  config = small_config(shared_mnist_dir)
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  metrics = workdir / "metrics.jsonl"
  whole = metrics.read_text()
  # Killed while writing the last epoch's metrics: its line is cut short,
  # and its checkpoint, saved after it, never came.
  metrics.write_text(whole[:-15])
  shutil.rmtree(max((workdir / "checkpoints").glob("[0-9]*"),
                    key=lambda p: int(p.name)))
  again = train.train_and_evaluate(config, workdir)
  assert again["test_accuracy"] == row["test_accuracy"]
  assert_same_bits(params_of(workdir), params_of(reference))
  assert [json.loads(line)["epoch"]
          for line in metrics.read_text().splitlines()] == [1, 2, 3]
  metrics.write_text(whole[:-15])  # cut, with its checkpoint there
  with pytest.raises(ValueError, match="lacks the metrics of epochs"):
    train.train_and_evaluate(config, workdir)
  lines = whole.splitlines()
  metrics.write_text("\n".join([lines[0], "{garbage", *lines[2:]]) + "\n")
  with pytest.raises(ValueError, match="metrics.jsonl line 2 is damaged"):
    train.train_and_evaluate(config, workdir)
  (workdir / "config.json").write_text('{"name": "x",')
  with pytest.raises(ValueError, match="config.json is damaged"):
    train.train_and_evaluate(config, workdir)


@pytest.mark.parametrize("damage", ["truncated", "not gzip", "a folder"])
def test_a_damaged_data_file_is_named(damage, mnist_dir):
  path = mnist_dir / "mnist" / "t10k-images-idx3-ubyte.gz"
  if damage == "truncated":
    path.write_bytes(path.read_bytes()[:100])
  elif damage == "not gzip":
    path.write_bytes(b"<html>not found</html>")
  else:
    path.unlink()
    path.mkdir()
  with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz can't be "
                                       "read .* fetch it again"):
    data.load("mnist", "test", mnist_dir)


def test_a_workdir_that_is_a_file_is_one_line(mnist_dir, tmp_path):
  (tmp_path / "file").write_text("not a folder")
  result = subprocess.run(
      main_command(ROOT / "configs" / "cpac_mnist.py", tmp_path / "file",
                   mnist_dir), cwd=ROOT, capture_output=True, text=True,
      timeout=120)
  assert result.returncode == 1 and "Traceback" not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and str(tmp_path / "file") in last, last


def test_results_csv_is_replaced_whole(tmp_path):
  path = tmp_path / "results.csv"
  rundir.append_row(path, {"experiment": "a", "key": "k1", "status": "ok"})
  rundir.append_row(path, {"experiment": "b", "key": "k2", "status": "ok"})
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  assert [r["key"] for r in rows] == ["k1", "k2"]
  assert not list(tmp_path.glob(".results-*"))  # no temp file left behind
  assert rundir.read_results(tmp_path) == rows


def test_killed_sweep_reruns_only_what_is_missing(mnist_dir, tmp_path):
  """kill -9 a real sweep once its first run is recorded; the rerun
  finishes the rest with no duplicate and no torn row."""
  here = str(ROOT / "tests" / "test_reliability.py")
  script = (
      "import runpy, sys\n"
      "from cpac_jax import sweep\n"
      f"config = runpy.run_path({here!r})"
      f"['small_config']({str(mnist_dir)!r}, num_epochs=1)\n"
      "config.sweep = ({'model.rank': [1, 2, 3]},)\n"
      f"sweep.run_sweep(config, {str(tmp_path)!r})\n")
  results = tmp_path / "results.csv"
  process = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT,
                             stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  deadline = time.time() + 180
  while time.time() < deadline and process.poll() is None and not (
      results.exists()):
    time.sleep(0.05)
  process.kill()
  process.wait()
  assert results.exists(), "the sweep recorded no run before the deadline"
  finished = subprocess.run([sys.executable, "-c", script], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
  assert finished.returncode == 0, finished.stderr[-2000:]
  with open(results, newline="") as f:
    rows = list(csv.DictReader(f))
  assert sorted(r["rank"] for r in rows) == ["1", "2", "3"]
  assert all(r["status"] == "ok" and r["test_accuracy"] for r in rows)


def test_vectorized_runs_resume_after_sigterm_with_the_same_bits(mnist_dir,
                                                                 tmp_path):
  configs = [small_config(mnist_dir, **{"model.rank": r}) for r in (1, 3)]

  def runs(where):
    return [(c, tmp_path / where / f"rank{c.model.rank}") for c in configs]

  train.train_runs(runs("straight"), tmp_path / "state-straight")

  def stop_after_first_epoch(line):
    if line.startswith("epoch 1/"):
      os.kill(os.getpid(), signal.SIGTERM)

  with pytest.raises(train.Preempted, match="rerun the same command"):
    train.train_runs(runs("preempted"), tmp_path / "state",
                     progress=stop_after_first_epoch)
  assert not (tmp_path / "preempted" / "rank1" / "result.json").exists()
  outcomes = train.train_runs(runs("preempted"), tmp_path / "state")
  assert [o.row["status"] for o in outcomes] == ["ok", "ok"]
  for (_, straight), (_, preempted) in zip(runs("straight"),
                                           runs("preempted")):
    assert_same_bits(params_of(preempted), params_of(straight))
    epochs = [json.loads(line)["epoch"] for line in
              (preempted / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def _leaves(config, prefix=""):
  """(dotted field, value) of every settable leaf of a config."""
  for name, value in config.items():
    if name in ("sweep", "paper", "paper_loss"):
      continue
    if hasattr(value, "items"):
      yield from _leaves(value, f"{prefix}{name}.")
    else:
      yield f"{prefix}{name}", value


def _misspelt(field):
  *parents, leaf = field.split(".")
  return ".".join([*parents, leaf[:-1] if len(leaf) > 2 else leaf + "x"])


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "configs").glob("*.py")
    if p.stem not in ("__init__", "studies")))  # studies: commands, no config
def test_every_config_field_misspelt_mistyped_or_empty_is_one_line(
    path, capsys):
  """Each field of each config, as a command line gives it: misspelt, a
  value of the wrong type, no value. Each is one line and exit status 2
  where the flags are parsed, or is taken (a string field takes any
  text); never a traceback."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  try:
    config, given = load_config(Path(path).stem), path
  except ValueError:  # a study whose main preset waits on an earlier stage
    config, given = load_config(Path(path).stem, "quick"), f"{path}:quick"

  def parse(*extra):  # as main's flags parse, on flags of its own
    own = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=own)
    flags.DEFINE_string("workdir", None, "", flag_values=own)
    try:
      cli.parse_flags(["main", f"--config={given}", "--workdir=w", *extra],
                      own)
      return None
    except SystemExit as stop:
      return stop.code

  assert parse() is None, capsys.readouterr().err

  tried = 0
  for field, value in _leaves(config):
    cases = [(f"--config.{_misspelt(field)}=1", True)]
    if isinstance(value, (bool, int, float)) and not isinstance(
        value, ml_collections.FieldReference):
      cases += [(f"--config.{field}=notanumber", field != "model.rank"),
                (f"--config.{field}=", field != "model.rank")]
    for flag, must_fail in cases:
      code = parse(flag)
      err = capsys.readouterr().err.strip().splitlines()
      tried += 1
      assert "Traceback" not in "\n".join(err), (flag, err)
      if code is None:
        assert not must_fail, f"{path} {flag} was taken"
        continue
      assert code == 2, (flag, code, err)
      assert len(err) == 1 and err[0].startswith("error: "), (flag, err)
      assert f"config.{flag[9:].split('=')[0]}" in err[0] or (
          flag[9:].split("=")[0].rsplit(".", 1)[-1] in err[0]), (flag, err)
  assert tried > 20
