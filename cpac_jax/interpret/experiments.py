"""The experiments behind experiments/interpret/: the claims of both papers
tested on trained models, with their tables and plots.

  python -m cpac_jax.interpret --sweep_dir=experiments/cpac_mnist \\
      --out=experiments/interpret      # feature selection on trained CPAC nets
  python -m cpac_jax.interpret --synthetic --out=experiments/interpret

TTL importance on trained models, validated against ground truth:
`cpac_jax.interpret.validation`.
"""

import json
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from matplotlib.figure import Figure  # no pyplot: files only, no display
from scipy import stats

from cpac_jax import data, layers, rundir, train
from cpac_jax.config import base_config, build_model, setting
from cpac_jax.interpret.importance import (
  factor_gradients,
  importance_from_gradients,
)
from cpac_jax.interpret.significance import (
  cp_feature_significance,
  feature_selection,
)
from cpac_jax.stats import interval95

__all__ = ["cpac_feature_selection", "importance_during_training",
           "redraw", "run", "synthetic_config", "synthetic_ttl"]


def importance_during_training(
    config: ml_collections.ConfigDict, workdir: str | Path,
    dataset: data.InMemory | None = None
) -> tuple[dict[str, list[jax.Array]], dict]:
  """Train the run `config` describes in `workdir` (the one training loop,
  `train.train_runs`, on `dataset` if given, else the config's) and
  accumulate the factor gradients of every step, as the TTL paper reads
  importance off training.

  Returns:
    The importances (as `tucker_factor_importance`) and the run's results
    row.
  """
  model = nnx.eval_shape(lambda: build_model(
      config, dataset.info if dataset is not None else None))
  outcome, = train.train_runs([(config, workdir)],
                              tap=factor_gradients(model), dataset=dataset)
  if outcome.error is not None:
    raise train.Diverged(outcome.error)
  return importance_from_gradients(model, outcome.tap), outcome.row


def synthetic_config(name: str, rank: tuple[int, ...], seed: int
                     ) -> ml_collections.ConfigDict:
  """A TTL MLP (hidden 32, Adam 1e-2) for synthetic uint8 images stored
  as 128 + 32 z, z standard normal."""
  config = base_config()
  config.name = name
  config.dataset.name = "synthetic"
  config.dataset.mean, config.dataset.std = 128 / 255, 32 / 255
  config.model.name = "ttl_mlp"
  config.model.factorization = "tucker"
  config.model.rank = rank
  config.model.kwargs = {"hidden_shape": (32,)}
  config.optimizer.learning_rate = 1e-2
  config.seed = seed
  return config


def synthetic_ttl(seed: int = 0, size: int = 16,
                  planted_rows: Sequence[int] = (3, 11), steps: int = 300,
                  batch_size: int = 128) -> dict:
  """Train a TTL MLP on data whose label depends only on `planted_rows` of a
  (size, size) input, and return the row and column importances.

  Inputs are standard normal (stored as uint8 images, 128 + 32 z, as the
  training loop takes images); the label is 1 when the planted rows' mean
  exceeds 0, else 0, so every other row is noise and all columns are
  equally informative. Trained for `steps` steps with Adam 1e-2 by the one
  training loop in a temporary workdir, importance accumulated over
  training (`importance_during_training`).

  Returns:
    {"rows", "columns": importances, "top_rows": indices of the
     len(planted_rows) most important rows, "accuracy": on 4096 held-out
     examples}.
  """
  rng = np.random.default_rng(seed)

  def sample(n):
    z = rng.standard_normal((n, size, size, 1))
    images = np.clip(np.round(128 + 32 * z), 0, 255).astype(np.uint8)
    planted = images[:, list(planted_rows)].astype(np.float64) - 128
    labels = (planted.mean(axis=(1, 2, 3)) > 0).astype(np.int32)
    return data.Split(images, labels)

  config = synthetic_config("synthetic_ttl", (4, 4, 4), seed)
  config.batch_size = batch_size
  config.num_epochs = 1
  config.steps_per_call = steps
  dataset = data.InMemory(sample(steps * batch_size), sample(4096),
                          data.DatasetInfo((size, size, 1), 2))
  with tempfile.TemporaryDirectory() as workdir:
    importance, row = importance_during_training(config, workdir, dataset)
  rows, columns = next(iter(importance.values()))[:2]
  return {"rows": rows, "columns": columns,
          "top_rows": [int(i) for i in jnp.argsort(-rows)[:len(planted_rows)]],
          "accuracy": row["test_accuracy"]}


def _runs(sweep_dir: Path, factorization: str, rank, init: str | None = None
          ) -> list[Path]:
  """Finished runs of a sweep (result.json written) with this factorization
  and rank (and `init`, if given), by seed."""
  found = []
  for result in sorted((sweep_dir / "runs").glob("*/result.json")):
    config = rundir.read_config(result.parent)
    if (config.model.factorization == factorization
        and config.model.rank == rank  # JSON: a tuple rank reads as a list
        and init in (None, setting(config, "model.init"))):
      found.append((config.seed, result.parent))
  return [run for _, run in sorted(found)]


def _test_set(config) -> tuple[jax.Array, jax.Array]:
  split = data.load(config.dataset.name, "test", config.dataset.get("data_dir"),
                    config.seed)
  x = data.normalize(jnp.asarray(split.images), config.dataset.mean,
                     config.dataset.std)
  return x, jnp.asarray(split.labels)


def cpac_feature_selection(sweep_dir: Path, rank: int, random_orders: int = 20,
                           init: str | None = None) -> dict:
  """Remove the first CP conv's output maps of every trained seed at `rank`
  (and `init`), least significant first, most significant first, by the
  combined score where a next CP conv consumes the maps, and in
  `random_orders` random orders per model.

  Returns the curves (test accuracy with 0, 1, ... maps removed) by order:
  one per model, and for "random order" one list of `random_orders` per
  model; and `paired_tests` of each order against the random ones.
  """
  runs = _runs(sweep_dir, "cp", rank, init)
  if not runs:
    raise FileNotFoundError(
        f"no finished CP runs at rank {rank}"
        + (f", init {init}" if init else "") + f" under {sweep_dir}/runs")
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
    remove = lambda order: feature_selection(model, conv, x, y,
                                             [int(i) for i in order])
    for name, order in orders.items():
      curves.setdefault(name, []).append(remove(order))
    curves.setdefault("random order", []).append(
        [remove(rng.permutation(len(scores))) for _ in range(random_orders)])
  result = {"sweep": str(sweep_dir), "rank": rank, "init": init,
            "runs": [str(r) for r in runs], "random_orders": random_orders,
            "significance": significance, "curves": curves}
  result["paired_tests"] = paired_tests(result)
  return result


def _per_model(result: dict, name: str) -> np.ndarray:
  """(models, maps + 1) curves of order `name`; random orders averaged
  within each model."""
  curves = np.asarray(result["curves"][name])
  if name != "random order":
    return curves
  if curves.ndim == 2:  # files from before: each model's orders in a row
    curves = curves.reshape(len(result["runs"]), -1, curves.shape[-1])
  return curves.mean(1)


def paired_tests(result: dict) -> dict:
  """Each order against the random ones, model by model: the mean test
  accuracy over the partial removals (1 .. maps - 1 removed; none and all
  are the same for every order), minus the same mean over that model's
  random orders, in points. Over models: mean, sample std, 95% t-interval,
  how many models the order beats random on, and two-sided p-values of
  the Wilcoxon signed-rank test and the paired t-test."""
  random = _per_model(result, "random order")[:, 1:-1].mean(1)
  tests = {}
  for name in result["curves"]:
    if name == "random order":
      continue
    gain = 100 * (_per_model(result, name)[:, 1:-1].mean(1) - random)
    n = len(gain)
    interval = interval95(gain.tolist()) or (math.nan, math.nan)
    tests[name] = {
        "n": n, "mean_gain_points": float(gain.mean()),
        "std": float(gain.std(ddof=1)) if n > 1 else 0.0,
        "interval95": [float(v) for v in interval],
        "wins": int(np.sum(gain > 0)),
        "wilcoxon_p": float(stats.wilcoxon(gain).pvalue) if n > 1
        else float("nan"),
        "paired_t_p": float(stats.ttest_1samp(gain, 0.0).pvalue) if n > 1
        else float("nan"),
        "gains": gain.tolist()}
  return tests


def _feature_selection_table(result: dict) -> str:
  """Test accuracy by maps removed (mean ± sample std over models; random
  orders averaged within each model first), then each order's paired test
  against random."""
  count = len(_per_model(result, "random order")[0])
  lines = ["| order | " + " | ".join(f"{k} removed" for k in range(count))
           + " |", "|---|" + "---|" * count]
  for name in result["curves"]:
    curves = _per_model(result, name)
    cells = [f"{m:.3f} ± {s:.3f}" for m, s in zip(curves.mean(0),
                                                   curves.std(0, ddof=1))]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines += ["", "| order, against random | models | beats random on | mean "
            "gain, points (1 to maps - 1 removed) | sample std | 95% "
            "interval | Wilcoxon p | paired t p |", "|---|---|---|---|---|"
            "---|---|---|"]
  for name, t in result["paired_tests"].items():
    lines.append(
        f"| {name} | {t['n']} | {t['wins']} | {t['mean_gain_points']:+.2f} "
        f"| {t['std']:.2f} | {t['interval95'][0]:+.2f} to "
        f"{t['interval95'][1]:+.2f} | {t['wilcoxon_p']:.3g} | "
        f"{t['paired_t_p']:.3g} |")
  return "\n".join(lines)


def _write_feature_selection(result: dict, stem: Path) -> str:
  """`stem`.md (the tables, with the command that made `result`) and
  `stem`.png from a feature-selection result; returns the tables."""
  sweep = Path(result["sweep"])
  table = _feature_selection_table(result)
  init = f" --init={result['init']}" if result.get("init") else ""
  models = len(result["runs"])
  stem.with_suffix(".md").write_text(
      f"# Feature selection, {sweep.name}, CP rank {result['rank']}\n\n"
      f"`python -m cpac_jax.interpret --sweep_dir={sweep} "
      f"--rank={result['rank']}{init} "
      f"--random_orders={result['random_orders']} --out={stem.parent}`\n\n"
      f"{models} trained models, {result['random_orders']} random orders "
      "each. Test accuracy, mean ± sample std (ddof=1) over the models.\n\n"
      f"{table}\n")
  _plot_feature_selection(result, stem.with_suffix(".png"))
  return table


def redraw(folder: str | Path) -> None:
  """Rewrite the tables and plots of every feature_selection_*.json in
  `folder` from its numbers, without retraining or reloading anything."""
  for path in sorted(Path(folder).glob("feature_selection_*.json")):
    result = json.loads(path.read_text())
    result.setdefault("random_orders", len(result["curves"]["random order"])
                      // len(result["runs"]))
    result.setdefault("paired_tests", paired_tests(result))
    _write_feature_selection(result, path.with_suffix(""))


def _plot_feature_selection(result: dict, path: Path) -> None:
  fig = Figure(figsize=(6, 4))
  ax = fig.subplots()
  for name in result["curves"]:
    curves = _per_model(result, name)
    mean, std = curves.mean(0), curves.std(0, ddof=1)
    removed = np.arange(len(mean))
    ax.plot(removed, mean, marker="o", label=f"{name} (± std over "
            f"{len(curves)} models)")
    ax.fill_between(removed, mean - std, mean + std, alpha=0.2)
  ax.set_xlabel("feature maps of the first CP conv removed")
  ax.set_ylabel("MNIST test accuracy")
  ax.set_title(f"CPAC-CNN rank {result['rank']}: removing maps by "
               "CP significance")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def _plot_synthetic(results: list[dict], planted, path: Path) -> None:
  fig = Figure(figsize=(6, 3.4))
  ax = fig.subplots()
  rows = np.asarray([r["rows"] for r in results])
  ax.bar(range(rows.shape[1]), rows.mean(0), yerr=rows.std(0), capsize=2,
         color=["C3" if i in planted else "C0" for i in range(rows.shape[1])])
  ax.set_xlabel("input row (red: the rows the label depends on)")
  ax.set_ylabel("importance")
  ax.set_title(f"synthetic TTL, {len(results)} seeds")
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def run(out: str, synthetic: bool = False, sweep_dir: str | None = None,
        rank: str | None = None, seeds: int = 5, init: str | None = None,
        random_orders: int = 20) -> None:
  """What `python -m cpac_jax.interpret` runs: the synthetic TTL experiment
  (`synthetic`), or feature selection on the CPAC sweep in `sweep_dir` at
  `rank` (JSON), writing its JSON, table and plot into `out`."""
  folder = Path(out)
  folder.mkdir(parents=True, exist_ok=True)
  if synthetic:
    planted = (3, 11)
    results = []
    for seed in range(seeds):
      r = synthetic_ttl(seed, planted_rows=planted)
      results.append({k: (np.asarray(v).tolist() if hasattr(v, "shape")
                          else v) for k, v in r.items()})
    (folder / "synthetic_ttl.json").write_text(json.dumps(
        {"planted_rows": planted, "runs": results}, indent=1))
    _plot_synthetic(results, planted, folder / "synthetic_ttl.png")
    print(json.dumps([(r["top_rows"], r["accuracy"]) for r in results]))
    return
  directory = Path(sweep_dir)
  config = rundir.read_config(next((directory / "runs").glob("*/")))
  if not config.model.name.startswith("cpac_cnn"):
    raise ValueError(
        f"{sweep_dir} is a {config.model.name} sweep; feature selection "
        "reads CPAC sweeps (TTL importance: --validate)")
  result = cpac_feature_selection(directory, json.loads(rank), random_orders,
                                  init)
  stem = f"feature_selection_{directory.name}_rank{result['rank']}"
  (folder / f"{stem}.json").write_text(json.dumps(result, indent=1))
  print(_write_feature_selection(result, folder / stem))
