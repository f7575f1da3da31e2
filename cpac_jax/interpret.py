"""What the factors say: CP feature-map significance (CPAC-Conv) and Tucker
factor importance (TTL), and the experiments that test both claims.

  python -m cpac_jax.interpret --sweep_dir=experiments/cpac_mnist \\
      --out=experiments/interpret      # feature selection on trained CPAC nets
  python -m cpac_jax.interpret --sweep_dir=experiments/ttl_mnist \\
      --out=experiments/interpret      # TTL importance maps
  python -m cpac_jax.interpret --synthetic --out=experiments/interpret
"""

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from cpac_jax import layers, models, train

__all__ = [
    "cp_feature_significance",
    "feature_selection",
    "importance_during_training",
    "importance_map",
    "synthetic_ttl",
    "tucker_factor_importance",
]


def cp_feature_significance(layer: layers.CPConv) -> dict[str, jax.Array]:
  """Significance of each input and output feature map of a `CPConv`.

  The kernel is a sum of rank-1 terms, K = sum_r s_0[:, r] o ... o a_in[:, r]
  o a_out[:, r]. Output map o receives K[..., o] = sum_r a_out[o, r] T_r,
  where T_r is the outer product of the other factors' r-th columns, with
  ||T_r|| = prod of their column norms. So

    significance_out[o] = sum_r |a_out[o, r]| * prod_{n != out} ||a_n[:, r]||

  bounds ||K[..., o]||_F from above (triangle inequality; equal at rank 1):
  a map whose factor row is small contributes little to every rank-1 term,
  hence little to the layer's output. Input maps likewise, from a_in's rows.

  Returns:
    {"input": (Cin,), "output": (Cout,)}.
  """
  factors = layer.factors()
  norms = [jnp.linalg.norm(f, axis=0) for f in factors]

  def score(mode):
    others = jnp.prod(jnp.stack([n for m, n in enumerate(norms) if m != mode]),
                      axis=0)
    return jnp.abs(factors[mode]) @ others

  return {"input": score(len(factors) - 2), "output": score(len(factors) - 1)}


def _tucker_layers(model: nnx.Module) -> dict[str, layers.TuckerDense]:
  return {"/".join(map(str, path)): node
          for path, node in nnx.iter_graph(model)
          if isinstance(node, layers.TuckerDense)}


def _factor_gradients(graphdef, rest, paths):
  """A jitted (params, x, y) -> {path: [dL/dU_n for each mode]}."""

  def loss(params, x, y):
    logits = nnx.merge(graphdef, params, rest, copy=True)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def gradients(params, x, y):
    grads = jax.grad(loss)(params, x, y)
    return {path: [_at(grads, path)["factors"][i][...]
                   for i in range(len(layer.factors))]
            for path, layer in paths.items()}

  return gradients


def _normalised_row_norms(total) -> dict[str, list[jax.Array]]:
  if total is None:
    raise ValueError("tucker_factor_importance: got no batches")
  rows = jax.tree.map(lambda g: jnp.linalg.norm(g, axis=1), total)
  return {path: [v / jnp.sum(v) for v in modes]
          for path, modes in rows.items()}


def _batches(batches):
  if isinstance(batches, tuple) and len(batches) == 2 and hasattr(
      batches[0], "shape"):
    return [batches]
  return batches


def tucker_factor_importance(
    model: nnx.Module,
    batches: tuple[jax.Array, jax.Array] | Iterable[tuple[jax.Array,
                                                           jax.Array]],
) -> dict[str, list[jax.Array]]:
  """Importance of each index of each mode of every `TuckerDense` in `model`.

  As the TTL paper proposes, from the gradients of the loss with respect to
  the factor matrices: the gradients dL/dU_n are summed over `batches`, and
  index i of mode n scores the norm of row i of that sum, normalised to sum
  to 1 per mode. Row i of U_n maps feature i of mode n (an image row, say)
  into the core, and dL/dU_n[i] = sum over examples of that feature times
  the signal back-propagated to the core: summed over many examples, it
  cancels for features the labels don't depend on and adds up for those
  they do. A feature that never varies from 0 (MNIST's empty border, in
  [0, 1] pixels) gets exactly 0. At a fixed model the sum is informative
  while the model still learns; `importance_during_training` accumulates it
  over training, as the paper does, which is what ranks planted features
  reliably (tests/test_interpret.py).

  Args:
    model: a model holding TuckerDense layers (e.g. `models.TTLMLP`).
    batches: one (inputs, integer labels) pair, or an iterable of them, as
      the model takes them (normalised).

  Returns:
    {layer path: [importance (I_n,) for each mode of in_shape + out_shape]}.
  """
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  gradients = _factor_gradients(graphdef, rest, _tucker_layers(model))
  total = None
  for x, y in _batches(batches):
    grads = gradients(params, x, y)
    total = grads if total is None else jax.tree.map(jnp.add, total, grads)
  return _normalised_row_norms(total)


def importance_during_training(
    model: nnx.Module, batches: Iterable[tuple[jax.Array, jax.Array]],
    tx: optax.GradientTransformation,
) -> tuple[dict[str, list[jax.Array]], nnx.Module]:
  """Train `model` on `batches` with `tx` (one `train.make_step` per batch)
  and accumulate the factor gradients of every step, as the TTL paper reads
  importance off training. Returns the importances (as
  `tucker_factor_importance`) and the trained model."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  gradients = _factor_gradients(graphdef, rest, _tucker_layers(model))
  step = jax.jit(train.make_step(graphdef, tx))
  opt_state = tx.init(params)
  total = None
  for x, y in batches:
    grads = gradients(params, x, y)
    total = grads if total is None else jax.tree.map(jnp.add, total, grads)
    params, rest, opt_state, _, _ = step(params, rest, opt_state, x, y)
  return _normalised_row_norms(total), nnx.merge(graphdef, params, rest)


def _at(state, path: str):
  node = state
  for key in path.split("/"):
    node = node[int(key) if key.isdigit() else key]
  return node


def importance_map(importance: Sequence[jax.Array]) -> jax.Array:
  """The input-space map the first two modes' importances imply: the outer
  product rows x columns, (I_0, I_1), normalised to sum to 1."""
  grid = jnp.outer(importance[0], importance[1])
  return grid / jnp.sum(grid)


def _accuracy(model: nnx.Module, x: jax.Array, y: jax.Array) -> float:
  graphdef, state = nnx.split(model)

  @jax.jit
  def correct(state, x, y):
    logits = nnx.merge(graphdef, state)(x)
    return jnp.sum(jnp.argmax(logits, -1) == y)

  total = sum(int(correct(state, x[i:i + 1000], y[i:i + 1000]))
              for i in range(0, len(y), 1000))
  return total / len(y)


def feature_selection(model: nnx.Module, layer: layers.CPConv, x: jax.Array,
                      y: jax.Array, order: Sequence[int]) -> list[float]:
  """Test accuracy as the output maps of `layer` (a CPConv inside `model`)
  are removed one by one in `order`, by zeroing their rows of the output
  factor: accuracy with 0, 1, ..., len(order) maps removed. The model is
  left as it was."""
  original = layer.out_factor[...]
  accuracies = [_accuracy(model, x, y)]
  try:
    for k in range(1, len(order) + 1):
      layer.out_factor[...] = original.at[jnp.asarray(order[:k])].set(0.0)
      accuracies.append(_accuracy(model, x, y))
  finally:
    layer.out_factor[...] = original
  return accuracies


def synthetic_ttl(seed: int = 0, size: int = 16,
                  planted_rows: Sequence[int] = (3, 11), steps: int = 300,
                  batch_size: int = 128) -> dict:
  """Train a TTL MLP on data whose label depends only on `planted_rows` of a
  (size, size) input, and return the row and column importances.

  Inputs are standard normal; the label is 1 when the planted rows' mean
  exceeds 0, else 0, so every other row is noise and all columns are
  equally informative. Trained with Adam 1e-2, importance accumulated over
  training (`importance_during_training`).

  Returns:
    {"rows", "columns": importances, "top_rows": indices of the
     len(planted_rows) most important rows, "accuracy": on held-out data}.
  """
  key_data, key_test, key_init = jax.random.split(jax.random.key(seed), 3)

  def sample(key, n):
    x = jax.random.normal(key, (n, size, size))
    y = (jnp.mean(x[:, jnp.asarray(planted_rows)], axis=(1, 2)) > 0)
    return x, y.astype(jnp.int32)

  model = models.TTLMLP(factorization="tucker", rank=(4, 4, 4),
                        input_shape=(size, size, 1), hidden_shape=(32,),
                        num_classes=2, rngs=nnx.Rngs(params=key_init))
  x_train, y_train = sample(key_data, steps * batch_size)
  batches = ((x_train[i * batch_size:(i + 1) * batch_size],
              y_train[i * batch_size:(i + 1) * batch_size])
             for i in range(steps))
  importance, model = importance_during_training(model, batches,
                                                 optax.adam(1e-2))
  x_test, y_test = sample(key_test, 4096)
  rows, columns = next(iter(importance.values()))[:2]
  return {"rows": rows, "columns": columns,
          "top_rows": [int(i) for i in jnp.argsort(-rows)[:len(planted_rows)]],
          "accuracy": _accuracy(model, x_test, y_test)}


# --- The experiments behind experiments/interpret/ --------------------------


def _runs(sweep_dir: Path, factorization: str, rank) -> list[Path]:
  """Run folders of a sweep with this factorization and rank, by seed."""
  found = []
  for config_path in sorted((sweep_dir / "runs").glob("*/config.json")):
    config = json.loads(config_path.read_text())
    run = config_path.parent
    if (config["model"]["factorization"] == factorization
        and config["model"]["rank"] == rank
        and list(run.glob("checkpoints/*/"))):
      found.append((config["seed"], run))
  return [run for _, run in sorted(found)]


def _test_set(config) -> tuple[jax.Array, jax.Array]:
  from cpac_jax import data

  split = data.load(config.dataset.name, "test", config.dataset.get("data_dir"))
  x = train.normalize(jnp.asarray(split.images), config)
  return x, jnp.asarray(split.labels)


def cpac_feature_selection(sweep_dir: Path, rank: int, random_orders: int = 5
                           ) -> dict:
  """Remove the first CP conv's output maps of every trained seed at `rank`,
  least significant first, most significant first and in random orders."""
  runs = _runs(sweep_dir, "cp", rank)
  if not runs:
    raise FileNotFoundError(
        f"no finished CP runs at rank {rank} under {sweep_dir}/runs")
  curves = {}
  significance = []
  rng = np.random.default_rng(0)
  for run in runs:
    model, config = train.restore(run)
    x, y = _test_set(config)
    conv = model.convs[0]
    scores = np.asarray(cp_feature_significance(conv)["output"])
    significance.append(scores.tolist())
    orders = {"least significant first": np.argsort(scores),
              "most significant first": np.argsort(-scores)}
    if len(model.convs) > 1 and isinstance(model.convs[1], layers.CPConv):
      # The map is also the next CP conv's input map: its factors score it
      # from the consuming side.
      consumed = np.asarray(cp_feature_significance(model.convs[1])["input"])
      orders["least significant first (x next layer's input score)"] = (
          np.argsort(scores * consumed))
    for _ in range(random_orders):
      orders.setdefault("random order", []).append(
          rng.permutation(len(scores)))
    for name, order in orders.items():
      for each in (order if name == "random order" else [order]):
        curves.setdefault(name, []).append(
            feature_selection(model, conv, x, y, [int(i) for i in each]))
  return {"sweep": str(sweep_dir), "rank": rank, "runs": [str(r) for r in runs],
          "significance": significance, "curves": curves}


def ttl_importance(sweep_dir: Path, rank: Sequence[int], seed: int = 0,
                   epochs: int = 1) -> dict:
  """Importance of MNIST-like rows and columns for the TTL MLP of a sweep:
  retrain its run at `rank` and `seed` from initialisation for `epochs`,
  accumulating factor gradients (the paper's reading), and report the rows,
  columns and the (rows x columns) map."""
  from cpac_jax import data

  runs = [r for r in _runs(sweep_dir, "tucker", list(rank))
          if json.loads((r / "config.json").read_text())["seed"] == seed]
  if not runs:
    raise FileNotFoundError(
        f"no finished Tucker run at rank {rank}, seed {seed} under "
        f"{sweep_dir}/runs")
  _, config = train.restore(runs[0])
  split = data.load(config.dataset.name, "train",
                    config.dataset.get("data_dir"))
  init_key, data_key = jax.random.split(jax.random.key(config.seed))
  model = train.build_model(config, split.images.shape[1:], init_key)
  images, labels = jnp.asarray(split.images), jnp.asarray(split.labels)
  size = config.batch_size

  def batches():
    for epoch in range(1, epochs + 1):
      order = jax.random.permutation(jax.random.fold_in(data_key, epoch),
                                     len(labels))
      for i in range(len(labels) // size):
        index = order[i * size:(i + 1) * size]
        yield train.normalize(images[index], config), labels[index]

  tx = train.make_optimizer(config, len(labels) // size)
  importance, model = importance_during_training(model, batches(), tx)
  rows, columns = next(iter(importance.values()))[:2]
  grid = importance_map([rows, columns])
  centre = float(jnp.sum(grid[4:24, 4:24]))
  x, y = _test_set(config)
  return {"sweep": str(sweep_dir), "run": str(runs[0]),
          "dataset": config.dataset.name, "rank": list(rank), "epochs": epochs,
          "rows": np.asarray(rows).tolist(),
          "columns": np.asarray(columns).tolist(),
          "centre_20x20_share": centre,
          "centre_20x20_area_share": 400 / 784,
          "test_accuracy_after": _accuracy(model, x, y)}


def _feature_selection_table(result: dict) -> str:
  """Test accuracy (mean ± std over models and orders) by maps removed."""
  count = len(next(iter(result["curves"].values()))[0])
  lines = ["| order | " + " | ".join(f"{k} removed" for k in range(count))
           + " |", "|---|" + "---|" * count]
  for name, curves in result["curves"].items():
    curves = np.asarray(curves)
    cells = [f"{m:.3f} ± {s:.3f}" for m, s in zip(curves.mean(0),
                                                   curves.std(0))]
    lines.append(f"| {name} (n={len(curves)}) | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _plot_feature_selection(result: dict, path: Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4))
  for name, curves in result["curves"].items():
    curves = np.asarray(curves)
    mean, std = curves.mean(0), curves.std(0)
    removed = np.arange(len(mean))
    ax.plot(removed, mean, marker="o", label=f"{name} (n={len(curves)})")
    ax.fill_between(removed, mean - std, mean + std, alpha=0.2)
  ax.set_xlabel("feature maps of the first CP conv removed")
  ax.set_ylabel("MNIST test accuracy")
  ax.set_title(f"CPAC-CNN rank {result['rank']}: removing maps by "
               "CP significance")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _plot_importance(result: dict, path: Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows, columns = np.asarray(result["rows"]), np.asarray(result["columns"])
  fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
  axes[0].bar(range(len(rows)), rows)
  axes[0].set_title("rows (mode 0)")
  axes[1].bar(range(len(columns)), columns)
  axes[1].set_title("columns (mode 1)")
  image = axes[2].imshow(np.outer(rows, columns), cmap="magma")
  axes[2].set_title("rows x columns")
  fig.colorbar(image, ax=axes[2], fraction=0.046)
  fig.suptitle(f"TTL {tuple(result['rank'])} on {result['dataset']}: "
               "factor-gradient importance")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _plot_synthetic(results: list[dict], planted, path: Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 3.4))
  rows = np.asarray([r["rows"] for r in results])
  ax.bar(range(rows.shape[1]), rows.mean(0), yerr=rows.std(0), capsize=2,
         color=["C3" if i in planted else "C0" for i in range(rows.shape[1])])
  ax.set_xlabel("input row (red: the rows the label depends on)")
  ax.set_ylabel("importance")
  ax.set_title(f"synthetic TTL, {len(results)} seeds")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _main():
  from absl import app, flags

  sweep_dir = flags.DEFINE_string("sweep_dir", None,
                                  "a CPAC or TTL sweep's workdir")
  rank = flags.DEFINE_string("rank", None, "rank of the runs to read, JSON "
                             "(8, or [5, 5, 10])")
  synthetic = flags.DEFINE_bool("synthetic", False,
                                "run the synthetic TTL experiment")
  seeds = flags.DEFINE_integer("seeds", 5, "seeds of the synthetic run")
  out = flags.DEFINE_string("out", "experiments/interpret", "output folder")

  def main(argv):
    del argv
    folder = Path(out.value)
    folder.mkdir(parents=True, exist_ok=True)
    if synthetic.value:
      planted = (3, 11)
      results = []
      for seed in range(seeds.value):
        r = synthetic_ttl(seed, planted_rows=planted)
        results.append({k: (np.asarray(v).tolist() if hasattr(v, "shape")
                            else v) for k, v in r.items()})
      (folder / "synthetic_ttl.json").write_text(json.dumps(
          {"planted_rows": planted, "runs": results}, indent=1))
      _plot_synthetic(results, planted, folder / "synthetic_ttl.png")
      print(json.dumps([(r["top_rows"], r["accuracy"]) for r in results]))
      return
    directory = Path(sweep_dir.value)
    config = json.loads(next((directory / "runs").glob("*/config.json"))
                        .read_text())
    name = directory.name
    if config["model"]["name"].startswith("cpac_cnn"):
      result = cpac_feature_selection(directory, json.loads(rank.value))
      stem = f"feature_selection_{name}_rank{result['rank']}"
      (folder / f"{stem}.json").write_text(json.dumps(result, indent=1))
      _plot_feature_selection(result, folder / f"{stem}.png")
      table = _feature_selection_table(result)
      (folder / f"{stem}.md").write_text(
          f"# Feature selection, {name}, CP rank {result['rank']}\n\n"
          f"`python -m cpac_jax.interpret --sweep_dir={directory} "
          f"--rank={rank.value} --out={folder}`\n\n{table}\n")
      print(table)
    else:
      result = ttl_importance(directory, json.loads(rank.value))
      (folder / f"importance_{name}.json").write_text(
          json.dumps(result, indent=1))
      _plot_importance(result, folder / f"importance_{name}.png")
      print(f"centre 20x20 holds {result['centre_20x20_share']:.3f} of the "
            f"importance ({result['centre_20x20_area_share']:.3f} of the area)")

  app.run(main)


if __name__ == "__main__":
  _main()
