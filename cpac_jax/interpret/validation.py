"""Is TTL importance right on a trained model? Every method of
`tucker_factor_importance`, and the paper's gradients accumulated over
training, scored against permutation importance on held-out data (the
rise in loss when one index's slice is shuffled across examples), on
synthetic designs with planted features and on MNIST and Fashion-MNIST.

  python -m cpac_jax.interpret --validate --out=experiments/interpret

writes importance_validation.{json,md,png} and the MNIST and Fashion-MNIST
maps importance_ttl_{mnist,fashion_mnist}.{json,png}.
"""

import importlib
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax.numpy as jnp
import ml_collections
import numpy as np
from matplotlib.figure import Figure  # no pyplot: files only, no display
from scipy import stats

from cpac_jax import data, train
from cpac_jax.interpret.experiments import (
    importance_during_training,
    synthetic_config,
)
from cpac_jax.interpret.importance import (
    DEFAULT_METHOD,
    METHODS,
    importance_map,
    tucker_factor_importance,
)
from cpac_jax.interpret.significance import accuracy
from cpac_jax.stats import interval95

__all__ = ["ACCUMULATED", "DESIGNS", "Design", "redraw", "run", "summarize",
           "validate_dataset", "validate_design", "write"]

ACCUMULATED = "gradient, accumulated over training (the paper)"


class Design(NamedTuple):
  """A synthetic task: inputs z ~ N(0, 1) of `image_shape`, stored as uint8
  images 128 + 32 z, and a label that depends on the `planted` indices
  alone ({mode: indices} of the TTL layer's in_shape)."""

  image_shape: tuple[int, ...]
  planted: dict[int, tuple[int, ...]]
  label: Callable[[np.ndarray], np.ndarray]  # z (N, *image_shape) -> 0/1
  rank: tuple[int, ...]
  mix: Callable[[np.ndarray, np.random.Generator], np.ndarray] = (
      lambda z, rng: z)  # correlations among the features, before labels


def _correlated(z, rng):
  """Rows 4 and 12 become noisy copies of the planted rows 3 and 11
  (correlation 0.8): predictive, but not what the label is made of."""
  z = z.copy()
  for source, copy in ((3, 4), (11, 12)):
    z[:, copy] = 0.8 * z[:, source] + 0.6 * rng.standard_normal(
        z[:, source].shape)
  return z


DESIGNS = {
    "planted rows": Design((16, 16, 1), {0: (3, 11)},
                           lambda z: z[:, [3, 11]].mean((1, 2, 3)) > 0,
                           (4, 4, 4)),
    "planted columns": Design((16, 16, 1), {1: (2, 9)},
                              lambda z: z[:, :, [2, 9]].mean((1, 2, 3)) > 0,
                              (4, 4, 4)),
    "planted block": Design((16, 16, 1), {0: (4, 5, 6, 7), 1: (8, 9, 10, 11)},
                            lambda z: z[:, 4:8, 8:12].mean((1, 2, 3)) > 0,
                            (4, 4, 4)),
    "3-mode input": Design((8, 8, 4), {0: (2, 5), 2: (1,)},
                           lambda z: z[:, [2, 5]][..., 1].mean((1, 2)) > 0,
                           (4, 4, 2, 4)),
    "correlated noise rows": Design(
        (16, 16, 1), {0: (3, 11)},
        lambda z: z[:, [3, 11]].mean((1, 2, 3)) > 0, (4, 4, 4), _correlated),
}


def _sample(design: Design, rng: np.random.Generator, n: int) -> data.Split:
  z = design.mix(rng.standard_normal((n, *design.image_shape)), rng)
  images = np.clip(np.round(128 + 32 * z), 0, 255).astype(np.uint8)
  # Labels from the stored pixels, so rounding can't flip a label.
  stored = (images.astype(np.float64) - 128) / 32
  return data.Split(images, design.label(stored).astype(np.int32))


def _batches(split: data.Split, config, size: int = 2500):
  x = data.normalize(jnp.asarray(split.images), config.dataset.mean,
                     config.dataset.std)
  y = jnp.asarray(split.labels)
  return [(x[i:i + size], y[i:i + size]) for i in range(0, len(y), size)]


def _scores(model, config, seen: data.Split, held_out: data.Split,
            accumulated, seed: int, repeats: int) -> tuple[dict, list]:
  """Every method's importance of the first TTL layer's modes, from
  `seen` (training examples), and the ground truth: permutation
  importance on `held_out`, `repeats` shuffles."""
  first = lambda importance: [np.asarray(v) for v in
                              next(iter(importance.values()))]
  batches = _batches(seen, config)
  scores = {method: first(tucker_factor_importance(
      model, batches, method, seed=seed)) for method in METHODS}
  scores[ACCUMULATED] = first(accumulated)
  truth = first(tucker_factor_importance(
      model, _batches(held_out, config), "permutation", repeats=repeats,
      seed=10_000 + seed))
  return scores, truth


def _top(values, k: int) -> set[int]:
  return {int(i) for i in np.argsort(-np.asarray(values), kind="stable")[:k]}


def _spearman(a, b) -> float:
  if np.ptp(a) == 0 or np.ptp(b) == 0:
    return float("nan")
  return float(stats.spearmanr(a, b).statistic)


def _train(config, workdir, dataset=None):
  """Train `config` (the one training loop), accumulating the paper's
  factor gradients; return (model, accumulated importance, results row)."""
  accumulated, row = importance_during_training(config, workdir, dataset)
  model, _ = train.restore(workdir, dataset.info if dataset else None)
  return model, accumulated, row


def validate_design(name: str, seed: int = 0, train_examples: int = 16_384,
                    epochs: int = 10, repeats: int = 5) -> dict:
  """Train a TTL MLP on design `name` of `DESIGNS` to convergence and score
  every method on it: per planted mode, Spearman correlation with the
  permutation ground truth (4,096 held-out examples) and top-k recovery
  (the share of the k planted indices among the method's top k)."""
  start = time.perf_counter()
  design = DESIGNS[name]
  rng = np.random.default_rng(seed)
  train_split = _sample(design, rng, train_examples)
  held_out = _sample(design, rng, 4096)
  config = synthetic_config("importance_validation", design.rank, seed)
  config.optimizer.schedule = "cosine"
  config.batch_size = 128
  config.num_epochs = epochs
  dataset = data.InMemory(train_split, held_out,
                          data.DatasetInfo(design.image_shape, 2))
  with tempfile.TemporaryDirectory() as workdir:
    model, accumulated, row = _train(config, workdir, dataset)
  seen = data.Split(train_split.images[:4096], train_split.labels[:4096])
  scores, truth = _scores(model, config, seen, held_out, accumulated, seed,
                          repeats)
  x, y = _batches(train_split, config, len(train_split.labels))[0]
  modes = {}
  for mode, planted in design.planted.items():
    k = len(planted)
    modes[str(mode)] = {
        "planted": list(planted),
        "truth": truth[mode].tolist(),
        "truth_top_k_recovery": len(_top(truth[mode], k) & set(planted)) / k,
        "methods": {m: {"spearman": _spearman(s[mode], truth[mode]),
                        "top_k_recovery": len(_top(s[mode], k)
                                              & set(planted)) / k,
                        "importance": s[mode].tolist()}
                    for m, s in scores.items()}}
  return {"design": name, "seed": seed, "train_accuracy": accuracy(model, x, y),
          "held_out_accuracy": row["test_accuracy"], "modes": modes,
          "seconds": time.perf_counter() - start}


def _dataset_config(name: str, seed: int) -> ml_collections.ConfigDict:
  """configs/ttl_<name>.py's (5, 5, 10) run at `seed`: the very runs of
  experiments/ttl_<name> (its sweep's key). The config is the installed
  `configs` package's module, found wherever cpac_jax is installed."""
  config = importlib.import_module(f"configs.ttl_{name}").get_config()
  config.model.factorization = "tucker"
  config.model.rank = (5, 5, 10)
  config.seed = seed
  return config


def validate_dataset(name: str, seed: int = 0, repeats: int = 3,
                     top_k: tuple[int, ...] = (5, 5, 30)) -> dict:
  """Train the (5, 5, 10) TTL MLP of configs/ttl_<name>.py at `seed` and
  score every method, from 5,000 training examples, against permutation
  importance on the test set: per mode (rows, columns, hidden units),
  Spearman correlation and top-k recovery (the share of the ground
  truth's top k among the method's top k)."""
  start = time.perf_counter()
  config = _dataset_config(name, seed)
  train_split, test_split = data.load_splits(config.dataset)
  with tempfile.TemporaryDirectory() as workdir:
    model, accumulated, row = _train(config, workdir)
  seen = data.Split(train_split.images[:5000], train_split.labels[:5000])
  scores, truth = _scores(model, config, seen, test_split, accumulated, seed,
                          repeats)
  x, y = _batches(train_split, config, len(train_split.labels))[0]
  modes = {}
  for mode, k in enumerate(top_k):
    best = _top(truth[mode], k)
    modes[str(mode)] = {
        "top_k": k, "truth": truth[mode].tolist(),
        "methods": {m: {"spearman": _spearman(s[mode], truth[mode]),
                        "top_k_recovery": len(_top(s[mode], k) & best) / k,
                        "importance": s[mode].tolist()}
                    for m, s in scores.items()}}
  return {"design": name, "seed": seed, "train_accuracy": accuracy(model, x, y),
          "test_accuracy": row["test_accuracy"], "modes": modes,
          "seconds": time.perf_counter() - start}



def _mode_name(design: str, mode: str) -> str:
  if design in ("mnist", "fashion_mnist"):
    return ("rows", "columns", "hidden units")[int(mode)]
  if design == "3-mode input":
    return ("rows", "columns", "channels")[int(mode)]
  return ("rows", "columns")[int(mode)]


def _cell(values: list[float]) -> str:
  values = [v for v in values if not np.isnan(v)]
  if not values:
    return "n/a"
  mean = float(np.mean(values))
  if len(values) < 2:
    return f"{mean:.2f}"
  low, high = interval95(values)
  return (f"{mean:.2f} ± {np.std(values, ddof=1):.2f} "
          f"[{low:.2f}, {high:.2f}]")


def summarize(results: list[dict]) -> dict:
  """{(design, mode): {method: {"spearman": [...], "top_k_recovery":
  [...]}}} over seeds, in order of appearance, keyed as "design, mode"."""
  table = {}
  for result in results:
    for mode, entry in result["modes"].items():
      key = f"{result['design']}, {_mode_name(result['design'], mode)}"
      for method, scores in entry["methods"].items():
        cell = table.setdefault(key, {}).setdefault(
            method, {"spearman": [], "top_k_recovery": []})
        for metric in cell:
          cell[metric].append(scores[metric])
  return table


def _markdown(results: list[dict], command: str) -> str:
  table = summarize(results)
  methods = list(METHODS) + [ACCUMULATED]
  seeds = {}
  for r in results:
    seeds.setdefault(r["design"], []).append(r)
  lines = [
      "# TTL importance against permutation ground truth", "",
      f"`{command}`", "",
      "Each trained model's first TTL layer; every method of "
      "`cpac_jax.interpret.tucker_factor_importance` computed on training "
      "examples, against the ground truth: permutation importance (the "
      "rise in test loss when one index's slice is shuffled across "
      "examples) on held-out data. Cells: mean ± sample std (ddof=1) "
      "[95% t-interval] over n seeds; n/a where a method gives every index "
      "the same score.", "",
      "| data | n | train accuracy | held-out accuracy |", "|---|---|---|---|"]
  for design, runs in seeds.items():
    held = [r.get("held_out_accuracy", r.get("test_accuracy")) for r in runs]
    lines.append(f"| {design} | {len(runs)} | "
                 f"{min(r['train_accuracy'] for r in runs):.3f} to "
                 f"{max(r['train_accuracy'] for r in runs):.3f} | "
                 f"{min(held):.3f} to {max(held):.3f} |")
  for metric, title in (
      ("top_k_recovery", "Top-k recovery: the share of the k planted indices "
       "(synthetic) or of the ground truth's top k (MNIST, Fashion-MNIST: "
       "k = 5 rows, 5 columns, 30 hidden units) among the method's top k"),
      ("spearman", "Spearman correlation with the ground truth")):
    lines += ["", f"## {title}", "",
              "| data, mode | " + " | ".join(methods) + " |",
              "|---|" + "---|" * len(methods)]
    for key, cells in table.items():
      lines.append(f"| {key} | " + " | ".join(
          _cell(cells[m][metric]) for m in methods) + " |")
  lines += ["", "On the synthetic designs only the planted indices move the "
            "loss; the ground truth of every other index is noise around 0, "
            "so Spearman there mostly ranks noise, and top-k recovery is the "
            "measure to read."]
  truth = [r["modes"][m]["truth_top_k_recovery"] for r in results
           for m in r["modes"] if "truth_top_k_recovery" in r["modes"][m]]
  if truth:
    lines += ["", "The ground truth itself puts the planted indices on top "
              f"in {sum(t == 1.0 for t in truth)} of {len(truth)} "
              "(design, mode, seed) cases."]
  return "\n".join(lines) + "\n"


def _plot(results: list[dict], path: Path) -> None:
  table = summarize(results)
  methods = list(METHODS) + [ACCUMULATED]
  fig = Figure(figsize=(12, 7))
  axes = fig.subplots(2, 1, sharex=True)
  width = 0.8 / len(methods)
  for ax, metric in zip(axes, ("top_k_recovery", "spearman")):
    for j, method in enumerate(methods):
      for i, cells in enumerate(table.values()):
        values = np.asarray([v for v in cells[method][metric]
                             if not np.isnan(v)])
        if not len(values):
          continue
        x = i - 0.4 + (j + 0.5) * width
        ax.bar(x, values.mean(), width, color=f"C{j}",
               label=method if i == 0 else None)
        ax.plot(np.full(len(values), x), values, "k.", markersize=3)
    ax.set_ylabel(metric.replace("_", " "))
    ax.axhline(0, color="grey", lw=0.5)
  axes[0].legend(fontsize=7, ncol=3, loc="lower center",
                 bbox_to_anchor=(0.5, 1.0))
  axes[1].set_xticks(range(len(table)))
  axes[1].set_xticklabels(list(table), rotation=30, ha="right", fontsize=7)
  fig.suptitle("TTL importance methods against permutation ground truth "
               "(bars: mean over seeds; dots: each seed)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def _plot_maps(result: dict, path: Path) -> None:
  """Rows, columns and the rows x columns map of the default method and of
  the paper's accumulated gradients, seed `result['seed']`."""
  fig = Figure(figsize=(11, 6.4))
  axes = fig.subplots(2, 3)
  for row, method, title in zip(
      axes, (DEFAULT_METHOD, ACCUMULATED),
      (f"{DEFAULT_METHOD}, after training", "the paper: gradients "
       "accumulated over training")):
    rows = np.asarray(result["modes"]["0"]["methods"][method]["importance"])
    columns = np.asarray(
        result["modes"]["1"]["methods"][method]["importance"])
    row[0].bar(range(len(rows)), rows)
    row[0].set_title(f"{title}: rows", fontsize=8)
    row[1].bar(range(len(columns)), columns)
    row[1].set_title("columns", fontsize=8)
    grid = np.asarray(importance_map([jnp.maximum(jnp.asarray(rows), 0),
                                      jnp.maximum(jnp.asarray(columns), 0)]))
    image = row[2].imshow(grid, cmap="magma")
    row[2].set_title("rows x columns", fontsize=8)
    fig.colorbar(image, ax=row[2], fraction=0.046)
  fig.suptitle(f"TTL (5, 5, 10) on {result['design']}, seed "
               f"{result['seed']}: what the trained model uses (top) and "
               "the paper's reading (bottom)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def _centre_share(result: dict, method: str) -> float:
  rows = jnp.maximum(jnp.asarray(
      result["modes"]["0"]["methods"][method]["importance"]), 0)
  columns = jnp.maximum(jnp.asarray(
      result["modes"]["1"]["methods"][method]["importance"]), 0)
  return float(jnp.sum(importance_map([rows, columns])[4:24, 4:24]))


def write(results: list[dict], folder: Path, command: str) -> None:
  """importance_validation.{json,md,png} and, for each MNIST-like data set
  among `results`, its seed-0 maps importance_ttl_<name>.{json,png}."""
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "importance_validation.json").write_text(json.dumps(
      {"command": command, "runs": results}, indent=1))
  (folder / "importance_validation.md").write_text(_markdown(results,
                                                             command))
  _plot(results, folder / "importance_validation.png")
  for name in ("mnist", "fashion_mnist"):
    first = next((r for r in results if r["design"] == name), None)
    if first is None:
      continue
    methods = (DEFAULT_METHOD, ACCUMULATED)
    (folder / f"importance_ttl_{name}.json").write_text(json.dumps(
        {"dataset": name, "seed": first["seed"], "rank": [5, 5, 10],
         "made_by": command, "centre_20x20_area_share": 400 / 784,
         "centre_20x20_share": {m: _centre_share(first, m) for m in methods},
         "rows_columns": {m: [first["modes"][str(i)]["methods"][m][
             "importance"] for i in (0, 1)] for m in methods}}, indent=1))
    _plot_maps(first, folder / f"importance_ttl_{name}.png")


def redraw(folder: str | Path) -> None:
  """Rewrite what `write` writes from importance_validation.json alone."""
  folder = Path(folder)
  saved = json.loads((folder / "importance_validation.json").read_text())
  write(saved["runs"], folder, saved["command"])


def run(out: str, seeds: int = 5, dataset_seeds: int = 3,
        designs: tuple[str, ...] | None = None,
        datasets: tuple[str, ...] = ("mnist", "fashion_mnist")) -> list[dict]:
  """The whole validation: every design of `DESIGNS` over `seeds` seeds,
  each of `datasets` over `dataset_seeds`; writes its files into `out`
  (`write`) and returns the per-seed results."""
  results = [validate_design(name, seed) for name in (designs or DESIGNS)
             for seed in range(seeds)]
  results += [validate_dataset(name, seed) for name in datasets
              for seed in range(dataset_seeds)]
  write(results, Path(out),
        f"python -m cpac_jax.interpret --validate --seeds={seeds} "
        f"--dataset_seeds={dataset_seeds} --out={out}")
  return results
