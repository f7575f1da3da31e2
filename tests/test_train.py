"""Training end to end: the command line on a tiny data set in the real
file format, and the train step."""






import json


import subprocess


import sys


from pathlib import Path


import jax










from cpac_jax import train




ROOT = Path(__file__).resolve().parents[1]


def test_main_trains_cpac_net_and_writes_its_workdir(mnist_dir, tmp_path):
  workdir = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, "-m", "cpac_jax.main",
       f"--config={ROOT / 'configs' / 'cpac_mnist.py'}",
       f"--workdir={workdir}", f"--config.dataset.data_dir={mnist_dir}",
       "--config.num_epochs=3", "--config.batch_size=16",
       "--config.optimizer.learning_rate=0.003", "--config.model.rank=4"],
      capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-2000:]
  row = json.loads((workdir / "result.json").read_text())
  assert row["test_accuracy"] > 0.9  # the planted blocks are easy to learn
  assert row["rank"] == "4" and row["params"] > 0
  metrics = [json.loads(line) for line in
             (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [m["epoch"] for m in metrics] == [1, 2, 3]
  assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
  assert row["test_loss"] == metrics[-1]["test_loss"]
  best = max(metrics, key=lambda m: m["test_accuracy"])
  assert (row["best_epoch"], row["best_test_accuracy"]) == (
      best["epoch"], best["test_accuracy"])
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  assert (workdir / "checkpoints" / str(3 * 512 // 16)).is_dir()  # global step
  assert json.loads((workdir / "config.json").read_text())["model"]["rank"] == 4


def test_train_step_updates_batch_norm_statistics():
  import jax.numpy as jnp
  import numpy as np
  import optax
  from flax import nnx

  class Net(nnx.Module):
    def __init__(self):
      self.linear = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
      self.norm = nnx.BatchNorm(4, rngs=nnx.Rngs(0))

    def __call__(self, x):
      return self.norm(self.linear(x))

  net = Net()
  net.train()
  graphdef, params, rest = nnx.split(net, nnx.Param, ...)
  tx = optax.sgd(0.1)
  step = jax.jit(train.make_step(graphdef, tx))
  x = jax.random.normal(jax.random.key(0), (8, 3))
  y = jnp.arange(8) % 4
  new_params, new_rest, _, loss, logits, grads = step(
      params, rest, tx.init(params), x, y)
  assert logits.shape == (8, 4) and float(loss) > 0
  assert not np.allclose(new_rest["norm"]["mean"][...], 0.0)
  assert not np.allclose(new_params["linear"]["kernel"][...],
                         params["linear"]["kernel"][...])
