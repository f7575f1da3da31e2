"""Data-parallel training over several (fake) devices."""

import json
import os
import subprocess
import sys
from pathlib import Path

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
import jax
row = train.train_and_evaluate(config, sys.argv[3])
print(json.dumps({"devices": jax.device_count(), "row": row}))
"""


def run(devices: int, data_dir, workdir):
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      f" --xla_force_host_platform_device_count={devices}")
  result = subprocess.run(
      [sys.executable, "-c", RUN, str(ROOT / "configs" / "cpac_mnist.py"),
       str(data_dir), str(workdir)], cwd=ROOT, env=env, capture_output=True,
      text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert out["devices"] == devices
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


def test_batch_that_does_not_divide_over_devices_is_refused(tmp_path):
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  result = subprocess.run(
      [sys.executable, "-m", "cpac_jax.main",
       f"--config={ROOT / 'configs' / 'cpac_mnist.py'}",
       f"--workdir={tmp_path / 'run'}", "--config.batch_size=12"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
  assert result.returncode != 0
  assert "batch_size 12 doesn't divide over the 8 devices" in result.stderr
