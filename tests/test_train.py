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


def test_train_step_in_bfloat16_keeps_float32_params_and_optimizer_state():
  import jax.numpy as jnp
  import numpy as np
  import optax
  from flax import nnx

  from cpac_jax.models import CNN

  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
  y = jnp.arange(4) % 3
  tx = optax.adam(1e-3)
  results = {}
  for dtype in (jnp.float32, jnp.bfloat16):  # the same parameters
    net = CNN(factorization="cp", rank=0.5, input_shape=(8, 8, 1),
              num_classes=3, widths=(4, "M", 4), dtype=dtype,
              rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)
    step = jax.jit(train.make_step(graphdef, tx))
    results[dtype] = step(params, rest, tx.init(params), x, y)
  params, rest, opt_state, loss, logits, grads = results[jnp.bfloat16]
  assert logits.dtype == jnp.bfloat16 and loss.dtype == jnp.float32
  floats = [a for a in jax.tree.leaves((params, rest, opt_state, grads))
            if jnp.issubdtype(a.dtype, jnp.floating)]
  assert floats and {a.dtype for a in floats} == {jnp.dtype(jnp.float32)}
  reference = results[jnp.float32]
  np.testing.assert_allclose(loss, reference[3], rtol=2e-2)
  # bfloat16 keeps 8 bits: the gradients 6.6% off float32's (in norm)
  error = optax.tree.norm(jax.tree.map(jnp.subtract, grads, reference[5]))
  assert error < 0.15 * optax.tree.norm(reference[5])


def test_training_in_bfloat16_lowers_the_loss(mnist_dir, tmp_path):
  import jax.numpy as jnp
  from flax import nnx

  from tests.conftest import load_config, tiny

  config = tiny(load_config("cpac_mnist", "quick"), mnist_dir,
                dtype="bfloat16", **{"model.rank": 4})
  row = train.train_and_evaluate(config, tmp_path / "run")
  metrics = [json.loads(line) for line in
             (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  losses = [m["train_loss"] for m in metrics]
  assert len(losses) == 3 and losses[-1] < 0.5 * losses[0], losses
  assert row["test_accuracy"] > 0.9  # the planted blocks are easy to learn
  model, _ = train.restore(tmp_path / "run")  # built in bfloat16 again
  assert {a.dtype for a in jax.tree.leaves(nnx.state(model))} == {
      jnp.dtype(jnp.float32)}
  assert model(jnp.zeros((1, 28, 28, 1))).dtype == jnp.bfloat16
