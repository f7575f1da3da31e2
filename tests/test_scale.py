"""Data-parallel training over several (fake) devices."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from cpac_jax import distributed, train
from cpac_jax.config import base_config

ROOT = Path(__file__).resolve().parents[1]

RUN = """
import json, runpy, sys
from cpac_jax import sweep, train
config = runpy.run_path(sys.argv[1])["get_config"]()
config.dataset.data_dir = sys.argv[2]
config.num_epochs = 2
config.batch_size = 16
config.steps_per_call = 8
config.optimizer.learning_rate = 3e-3
if len(sys.argv) > 4:  # coordinator address, number of processes, index
  config.distributed.initialize = True
  config.distributed.coordinator_address = sys.argv[4]
  config.distributed.num_processes = int(sys.argv[5])
  config.distributed.process_id = int(sys.argv[6])
import jax
epochs = []
row = train.train_and_evaluate(config, sys.argv[3], progress=epochs.append)
epochs = [e.split(", ")[:2] for e in epochs if "test" in e]  # no timings
print(json.dumps({"devices": jax.device_count(), "row": row,
                  "epochs": epochs}))
"""


def start(devices: int, data_dir, workdir, *distributed):
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      f" --xla_force_host_platform_device_count={devices}")
  return subprocess.Popen(
      [sys.executable, "-c", RUN, str(ROOT / "configs" / "cpac_mnist.py"),
       str(data_dir), str(workdir), *map(str, distributed)], cwd=ROOT, env=env,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process, devices: int) -> dict:
  try:
    stdout, stderr = process.communicate(timeout=300)
  finally:
    process.kill()
  assert process.returncode == 0, stderr[-2000:]
  out = json.loads(stdout.strip().splitlines()[-1])
  assert out["devices"] == devices
  return out


def run(devices: int, data_dir, workdir):
  out = finish(start(devices, data_dir, workdir), devices)
  metrics = [json.loads(line) for line in
             (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  return out["row"], metrics


def test_eight_devices_train_like_one(mnist_dir, tmp_path):
  one, one_metrics = run(1, mnist_dir, tmp_path / "one")
  eight, eight_metrics = run(8, mnist_dir, tmp_path / "eight")
  for a, b in zip(one_metrics, eight_metrics, strict=True):
    assert abs(a["train_loss"] - b["train_loss"]) < 1e-4 * max(
        1, a["train_loss"])
    assert abs(a["test_accuracy"] - b["test_accuracy"]) <= 2 / 256
  assert one["test_accuracy"] > 0.9


@pytest.mark.slow
def test_batch_that_does_not_divide_over_devices_is_refused(tmp_path):
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      " --xla_force_host_platform_device_count=8")
  result = subprocess.run(
      [sys.executable, "-m", "cpac_jax.main",
       f"--config={ROOT / 'configs' / 'cpac_mnist.py'}",
       f"--workdir={tmp_path / 'run'}", "--config.batch_size=12"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
  assert result.returncode != 0
  assert "batch_size 12 doesn't divide over the 8 devices" in result.stderr


def test_two_processes_train_in_lock_step_to_the_one_process_parameters(
    mnist_dir, tmp_path):
  # Two processes on localhost, one CPU device each, joined by
  # jax.distributed (gloo collectives), share each batch; one process with
  # two devices splits it the same way.
  with socket.socket() as s:
    s.bind(("localhost", 0))
    address = f"localhost:{s.getsockname()[1]}"
  workdir = tmp_path / "two_processes"
  processes = [start(1, mnist_dir, workdir, address, 2, i) for i in range(2)]
  first, second = (finish(p, 2) for p in processes)
  assert first["epochs"] == second["epochs"]  # the same loss, step by step
  assert len(first["epochs"]) == 2
  assert not list(workdir.glob("*.tmp"))
  run(2, mnist_dir, tmp_path / "one_process")
  (ours, _), (theirs, _) = (train.restore(w) for w in (
      workdir, tmp_path / "one_process"))
  for a, b in zip(jax.tree.leaves(nnx.state(ours, nnx.Param)),
                  jax.tree.leaves(nnx.state(theirs, nnx.Param)), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_distributed_settings_are_checked_before_joining(tmp_path):
  config = base_config()
  config.distributed.initialize = True
  config.distributed.num_processes = 2
  config.distributed.process_id = 2
  with pytest.raises(ValueError, match="process_id 2 must be in 0..1"):
    distributed.initialize(config)
  config.distributed.process_id = 0
  config.distributed.coordinator_address = "localhost"
  with pytest.raises(ValueError, match="'localhost' is not host:port"):
    distributed.initialize(config)
