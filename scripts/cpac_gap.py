"""The CPAC two-layer gap study's README blocks, from committed files.

  python scripts/cpac_gap.py          # write the blocks
  python scripts/cpac_gap.py --check  # exit 1 if one is stale

experiments/cpac_mnist/README.md asks why the paper's numbers at ranks 3
and 9-12 lie above every one of our seeds. Each block here answers a part
of it from what is committed:

- `gap`: where the paper's single runs fall among our runs
  (`experiments/cpac_mnist/results.csv`; the paper's numbers from
  `configs/cpac_mnist.py`);
- `selection`: the expected best of k of our runs;
- `init`: our copy of the official CP init against TensorLy 0.4.0
  (`official_parafac.json`, from scripts/check_official_parafac.py);
- `float64`: the CP factors and their Adam state in float64, paired by seed
  with the float32 runs (`float64/results.csv`, preset "float64");
- `epochs20`: 20 epochs instead of 10 (`epochs20/`, preset "epochs20");
- `official`: the official code run here (`official_runs/*.log`, `.json`,
  from scripts/official_cpac.py). Its Adam runs at a constant rate, so
  epochs 1-10 of a 20-epoch run are a 10-epoch run: every run that reached
  epoch 10 counts in the epoch-10 columns; a run still going counts where
  it has got to, and the block says how far each run is.
"""

import json
import re
import runpy
import statistics
import sys
from pathlib import Path

from cpac_jax import report, rundir

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "experiments" / "cpac_mnist"
RUNS = EXPERIMENT / "official_runs"
SETTINGS = ("rank3", "rank10", "rank12", "dense")  # run with the official code
GAP_RANKS = ("rank3", "rank9", "rank10", "rank11", "rank12")
_LINE = re.compile(r"Avg\. loss: ([\d.]+), Accuracy: (\d+)/(\d+)")


def official_runs() -> list[dict]:
  """Each run of the official code: setting, seed, epochs asked and done,
  and per epoch (accuracy, loss)."""
  runs = []
  for record_path in sorted(RUNS.glob("*_seed*_epochs*.json")):
    record = json.loads(record_path.read_text())
    log = record_path.with_suffix(".log")
    lines = log.read_text().splitlines() if log.exists() else []
    epochs = []
    for line in lines:
      match = _LINE.search(line)
      if match is None:
        raise ValueError(f"{log}: unreadable test line {line!r}")
      loss, correct, total = match.groups()
      epochs.append((int(correct) / int(total), float(loss)))
    if len(epochs) != record["epochs_done"]:
      raise ValueError(f"{log} has {len(epochs)} test lines, its record "
                       f"{record['epochs_done']}")
    runs.append({"setting": record_path.stem.split("_seed")[0],
                 "seed": record["seed"], "epochs": record["epochs"],
                 "history": epochs, "epoch_seconds": record["epoch_seconds"],
                 "versions": record["versions"]})
  return runs


def _rows(workdir: Path = EXPERIMENT, init: str = "official"
          ) -> dict[str, dict[int, dict]]:
  """Finished runs of `workdir` with model.init `init` (the empty string
  for the default init): setting -> seed -> row."""
  out = {}
  for row in rundir.read_results(workdir):
    if (row.get("init") or "") == init and row["status"] == "ok":
      setting = ("dense" if row["factorization"] == "dense"
                 else f"rank{row['rank']}")
      out.setdefault(setting, {})[int(row["seed"])] = row
  return out


def _ours(column: str = "test_accuracy", workdir: Path = EXPERIMENT
          ) -> dict[str, list[float]]:
  """cpac_jax's `column` (the final epoch's test accuracy, say), official
  init, by setting, in seed order."""
  return {setting: [float(runs[seed][column]) for seed in sorted(runs)]
          for setting, runs in _rows(workdir).items()}


def _setting_key(setting: str) -> tuple[bool, int]:
  """Ranks in order, dense last."""
  return setting == "dense", 0 if setting == "dense" else int(setting[4:])


def _order(settings) -> list[str]:
  return sorted(settings, key=_setting_key)


def _names(settings: list[str]) -> str:
  """["rank3", "rank9", "dense"] -> "ranks 3, 9 and dense"."""
  if not settings:
    return "no setting"
  ranks = [s[4:] for s in settings if s != "dense"]
  words = ([("rank " if len(ranks) == 1 else "ranks ") + ", ".join(ranks)]
           if ranks else []) + (["dense"] if "dense" in settings else [])
  text = " and ".join(words)
  return text.replace(", " + ranks[-1], " and " + ranks[-1], 1) if (
      len(ranks) > 1 and "dense" not in settings) else text


def _paired(diffs: list[float]) -> str:
  """'+0.30 [+0.12, +0.48] points, n = 12'."""
  low, high = report.interval95(diffs)
  return (f"{statistics.fmean(diffs):+.2f} [{low:+.2f}, {high:+.2f}] points, "
          f"n = {len(diffs)}")


def gap_facts() -> str:
  """Where the paper's single runs fall among our official-init runs."""
  paper, paper_loss = _paper()
  rows = rundir.read_results(EXPERIMENT)
  finals, bests = _ours(), _ours("best_test_accuracy")
  losses = _ours("test_loss")
  by_init = {}
  for row in rows:
    by_init[row.get("init") or "default"] = by_init.get(
        row.get("init") or "default", 0) + 1
  order = _order(finals)
  above = {name: [s for s in order if paper[s] > max(v[s])]
           for name, v in (("final", finals), ("best", bests))}
  below = {name: [s for s in order if paper[s] < min(v[s])]
           for name, v in (("final", finals), ("best", bests))}
  fitted = [s for s in order if paper_loss[s] < min(losses[s])]
  n = min(len(v) for v in finals.values())
  default, official = _rows(init=""), _rows()
  high = [f"rank{r}" for r in range(9, 13)]
  paired = {column: [100 * (float(default[s][seed][column])
                            - float(official[s][seed][column]))
                     for s in high for seed in sorted(default[s])]
            for column in ("test_accuracy", "best_test_accuracy")}
  return (
      f"`results.csv` holds {len(rows)} runs: "
      + ", ".join(f"{count} with the {init} init"
                  for init, count in sorted(by_init.items()))
      + f". With the official init ({n} seeds a setting), the paper's "
      f"single run lies above all {n} of our final-epoch accuracies at "
      f"{_names(above['final'])}, and above all {n} best-epoch ones at "
      f"{_names(above['best'])}; below all of them at "
      f"{_names(below['final'])} (final) and {_names(below['best'])} "
      "(best epoch). Its test loss is below all of ours (final epoch) at "
      f"{_names(fitted)}: where the gap is, the official nets are better "
      "fitted, not luckier on accuracy alone. The default init against "
      f"the official one at ranks 9-12, paired by seed ({len(default[high[0]])}"
      " seeds a rank; the pairs of one seed share its data order): "
      f"{_paired(paired['test_accuracy'])} on the final epoch, "
      f"{_paired(paired['best_test_accuracy'])} on the best.")


def init_block() -> str:
  """Our copy of the official CP init against TensorLy 0.4.0."""
  found = json.loads((EXPERIMENT / "official_parafac.json").read_text())
  by_rank = found["by_rank"]
  exact = [e for e in by_rank if e["factor_gap"] < 1e-6]
  apart = [e for e in by_rank if e["factor_gap"] >= 1e-6]
  seeds = len(found["seeds"])
  lines = [
      "| rank | largest kernel difference | largest factor difference "
      "(columns matched up to sign) | seeds where TensorLy raises | start "
      "degeneracy, ours: min-max | TensorLy's (the seeds it decomposes) | "
      "Spearman (degeneracy, "
      "final acc) over seeds: rho (p) |", "|---|---|---|---|---|---|---|"]
  for e in by_rank:
    rho = e.get("spearman_degeneracy_accuracy")
    lines.append(
        f"| {e['rank']} | {e['kernel_gap']:.1e} | {e['factor_gap']:.1e} | "
        f"{e['tensorly_errors']} of {seeds} | "
        f"{min(e['degeneracy']):.1f}-{max(e['degeneracy']):.1f} | "
        f"{min(e['tensorly_degeneracy']):.1f}-"
        f"{max(e['tensorly_degeneracy']):.1f} | "
        + ("-" if rho is None else f"{rho[0]:+.2f} ({rho[1]:.2g})") + " |")
  ps = [e["spearman_degeneracy_accuracy"][1] for e in by_rank
        if "spearman_degeneracy_accuracy" in e]
  return (
      "\n".join(lines) + "\n\n"
      f"Seeds 0-{seeds - 1}, both convs, TensorLy {found['tensorly']} "
      f"given the same fill draws as ours. At ranks {exact[0]['rank']}-"
      f"{exact[-1]['rank']} the two give the same factors to "
      f"{max(e['factor_gap'] for e in exact):.0e}. At ranks "
      f"{apart[0]['rank']}-{apart[-1]['rank']} conv1 (8 x 3 x 3 x 1, at "
      "most 9 columns of data) makes ALS's normal equations singular: "
      "both rebuild the same kernel (to "
      f"{max(e['kernel_gap'] for e in apart):.0e}), but their factors part "
      f"(by up to {max(e['factor_gap'] for e in apart):.0f}), and "
      "TensorLy's starts are the more degenerate (component norms summed "
      "over the kernel's norm: up to "
      f"{max(max(e['tensorly_degeneracy']) for e in apart):.0f} against "
      f"our {max(max(e['degeneracy']) for e in apart):.0f}). No rank's "
      "correlation between a start's degeneracy and its run's accuracy "
      f"has p under {0.05 / len(ps):.4f}, the Bonferroni threshold for "
      f"these {len(ps)} tests (smallest p {min(ps):.2g}): that degenerate "
      "starts train worse is not resolved.")


def float64_block() -> str:
  """The float64 arm against the committed float32 runs, paired by seed."""
  workdir = EXPERIMENT / "float64"
  if not (workdir / "results.csv").exists():
    return "Not run yet."
  wide, narrow = _rows(workdir), _rows()
  lines = ["| rank | seeds | float64: final acc mean ± std | float32 (the "
           "table above) | float64 - float32, paired by seed | best epoch, "
           "paired |", "|---|---|---|---|---|---|"]
  pooled = {"test_accuracy": [], "best_test_accuracy": []}
  for setting in _order(wide):
    seeds = sorted(set(wide[setting]) & set(narrow[setting]))
    diffs = {}
    for column in pooled:
      diffs[column] = [100 * (float(wide[setting][s][column])
                              - float(narrow[setting][s][column]))
                       for s in seeds]
      pooled[column] += diffs[column]
    values = [float(wide[setting][s]["test_accuracy"]) for s in seeds]
    base = [float(narrow[setting][s]["test_accuracy"]) for s in seeds]
    lines.append(
        f"| {setting[4:]} | {len(seeds)} | {_stat(values)} | {_stat(base)} | "
        + (" | ".join(_paired(diffs[c]) if len(seeds) > 1 else "-"
                      for c in pooled)) + " |")
  return ("\n".join(lines) + "\n\nPooled over the ranks: "
          f"{_paired(pooled['test_accuracy'])} (final epoch), "
          f"{_paired(pooled['best_test_accuracy'])} (best epoch); the pairs "
          "of one seed share its kernels' draw and data order.")


def _paper() -> tuple[dict, dict]:
  config = runpy.run_path(str(ROOT / "configs" / "cpac_mnist.py"))
  key = ("mnist", 2)
  label = lambda r: "dense" if r == "dense" else f"rank{r}"  # noqa: E731
  return ({label(r): v for r, v in config["PAPER"][key].items()},
          {label(r): v for r, v in config["PAPER_LOSS"][key].items()})


def _stat(values: list[float]) -> str:
  if not values:
    return "-"
  if len(values) == 1:
    return f"{values[0]:.4f} (n=1)"
  mean, std = statistics.fmean(values), statistics.stdev(values)
  return f"{mean:.4f} ± {std:.4f} (n={len(values)})"


def official_table(runs: list[dict]) -> str:
  paper, paper_loss = _paper()
  ours = _ours()
  head = ["setting", "paper acc (loss)",
          "official code here, epoch 10: acc mean ± std (n)",
          "epoch 10: test loss (mean)",
          "best of epochs 1-10: acc mean ± std (n)",
          "epoch 20: acc", "best of epochs 1-20: acc",
          "paper vs epoch 10 here: predictive t (p)",
          "cpac_jax, official init, epoch 10: acc mean ± std (n)"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for setting in SETTINGS:
    ten = [r for r in runs if r["setting"] == setting
           and len(r["history"]) >= 10]
    twenty = [r for r in runs if r["setting"] == setting
              and len(r["history"]) >= 20]
    at10 = [r["history"][9][0] for r in ten]
    found = report.predictive_t(at10, paper[setting])
    cells = [
        setting, f"{paper[setting]:.4f} ({paper_loss[setting]:.4f})",
        _stat(at10),
        f"{statistics.fmean(r['history'][9][1] for r in ten):.4f}"
        if ten else "-",
        _stat([max(a for a, _ in r["history"][:10]) for r in ten]),
        _stat([r["history"][19][0] for r in twenty]),
        _stat([max(a for a, _ in r["history"][:20]) for r in twenty]),
        "-" if found is None else "{:+.2f} ({:.2g})".format(*found),
        _stat(ours.get(setting, []))]
    lines.append("| " + " | ".join(cells) + " |")
  going = [f"{r['setting']} seed {r['seed']}: {len(r['history'])} of "
           f"{r['epochs']} epochs" for r in runs
           if len(r["history"]) < r["epochs"]]
  versions = sorted({", ".join(f"{k} {v}" for k, v in r["versions"].items())
                     for r in runs})
  seconds = [s for r in runs for s in r["epoch_seconds"]]
  text = "\n".join(lines)
  text += ("\n\nRuns not yet finished (counted above as far as they got): "
           + ("; ".join(going) if going else "none") + ".")
  if seconds:
    text += (f" An epoch took a median {statistics.median(seconds) / 60:.1f} "
             "minutes on one thread, the CPU shared with other work.")
  if versions:
    text += " Run under " + "; ".join(versions) + "."
  return text


def selection_table() -> str:
  """The expected best of k of our runs against the paper, on the final
  epoch and on the best epoch."""
  paper, _ = _paper()
  ks = (1, 2, 3, 5, 10)
  head = ["setting", "paper acc", "n"]
  for epoch in ("final", "best"):
    head += [f"{epoch} epoch, best of {k}" for k in ks] + [
        f"{epoch} epoch: smallest k reaching the paper"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  finals, bests = _ours(), _ours("best_test_accuracy")
  for setting in _order(finals):
    cells = [setting, f"{paper[setting]:.4f}", str(len(finals[setting]))]
    for values in (finals[setting], bests[setting]):
      cells += [f"{report.expected_best_of(values, k):.4f}" for k in ks
                if k <= len(values)]
      reach = [k for k in range(1, len(values) + 1)
               if report.expected_best_of(values, k) >= paper[setting]]
      cells.append(str(reach[0]) if reach else "none")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


EPOCH_COLUMNS = ("setting", "seed", "epoch", "test_accuracy", "test_loss")


def collect_epochs(workdir: Path) -> Path:
  """`workdir`/epochs.csv: every finished run's test accuracy and loss
  after each epoch, from its run folder's metrics.jsonl (run folders are
  not committed; this file is). Rows already there for runs whose folder
  is gone are kept."""
  path = workdir / "epochs.csv"
  kept = {(r["setting"], r["seed"]): [] for r in rundir.read_csv(path)}
  for r in rundir.read_csv(path):
    kept[r["setting"], r["seed"]].append(r)
  for setting, runs in _rows(workdir).items():
    for seed, row in runs.items():
      metrics = (workdir / "runs" / f"{row['run']}-{row['key']}"
                 / "metrics.jsonl")
      if not metrics.exists():
        continue
      lines = [json.loads(line) for line in metrics.read_text().splitlines()]
      if len(lines) != int(row["epochs"]):
        raise ValueError(f"{metrics}: {len(lines)} epochs, its row says "
                         f"{row['epochs']}")
      kept[setting, str(seed)] = [
          {"setting": setting, "seed": seed, "epoch": m["epoch"],
           "test_accuracy": m["test_accuracy"], "test_loss": m["test_loss"]}
          for m in lines]
  order = sorted(kept, key=lambda k: (_setting_key(k[0]), int(k[1])))
  rows = [r for key in order for r in kept[key]]
  rundir.write_rows(path, rows, EPOCH_COLUMNS)
  return path


def epochs20_block() -> str:
  """20 epochs against 10, paired by seed, and against the paper."""
  workdir = EXPERIMENT / "epochs20"
  if not (workdir / "results.csv").exists():
    return "Not run yet."
  paper, _ = _paper()
  long, short = _rows(workdir), _rows()
  history = {}
  for r in rundir.read_csv(workdir / "epochs.csv"):
    history.setdefault((r["setting"], int(r["seed"])), {})[int(r["epoch"])] = (
        float(r["test_accuracy"]))
  lines = ["| setting | seeds | paper acc | epoch 10 (these runs) | epoch 20 | "
           "epoch 20 - epoch 10, paired | best of 20 epochs | paper vs "
           "epoch 20: predictive t (p) | paper vs best of 20 |",
           "|---|---|---|---|---|---|---|---|---|"]
  same = []
  for setting in _order(long):
    seeds = sorted(long[setting])
    at10 = [history[setting, s][10] for s in seeds]
    at20 = [float(long[setting][s]["test_accuracy"]) for s in seeds]
    best = [float(long[setting][s]["best_test_accuracy"]) for s in seeds]
    same += [abs(history[setting, s][10]
                 - float(short[setting][s]["test_accuracy"]))
             for s in seeds if s in short.get(setting, {})]
    t20, tbest = (report.predictive_t(v, paper[setting]) for v in (at20, best))
    lines.append(
        f"| {setting} | {len(seeds)} | {paper[setting]:.4f} | {_stat(at10)} | "
        f"{_stat(at20)} | "
        + (_paired([100 * (b - a) for a, b in zip(at10, at20)])
           if len(seeds) > 1 else "-")
        + f" | {_stat(best)} | "
        + " | ".join("-" if t is None else "{:+.2f} ({:.2g})".format(*t)
                     for t in (t20, tbest)) + " |")
  return ("\n".join(lines) + "\n\nEpoch 10 of these runs against the "
          "committed 10-epoch runs of the same seed: largest difference "
          f"{max(same):.4f} ({len(same)} runs)." if same else "")


def summary() -> str:
  """The top README's bullet for this experiment."""
  finals = _ours()
  above = [s for s in _order(finals) if _paper()[0][s] > max(finals[s])]
  default = _rows(init="")
  exact = [e["rank"] for e in json.loads(
      (EXPERIMENT / "official_parafac.json").read_text())["by_rank"]
           if e["factor_gap"] < 1e-6]
  runs = official_runs()
  done = sum(len(r["history"]) >= 10 for r in runs)
  k = min(map(len, finals.values()))
  short = [s for s in above
           if report.expected_best_of(finals[s], k) < _paper()[0][s]]
  return (
      "**The headline table**, the CPAC-Conv paper's two-layer net on MNIST "
      "([experiments/cpac_mnist](experiments/cpac_mnist/README.md)): CP "
      "ranks 1..12 and dense, batch size 1 as the paper, with the official "
      "code's initialisation "
      f"({min(map(len, finals.values()))} seeds) and ours "
      f"({min(map(len, default.values()))} seeds). At {_names(above)} the "
      "paper's single runs lie above every one of our seeds (final epoch), "
      "a pattern chance does not explain (the joint test under its table). "
      "Its cause is not known yet. Tested so far: keeping the best of "
      f"{k} of our runs still falls short at {_names(short)}; our copy of "
      "the official initialisation gives TensorLy 0.4.0's factors at ranks "
      f"{exact[0]}-{exact[-1]} (not at the others, where its starts are "
      "the more degenerate). Under way: the official code itself run here "
      f"({done} of its runs past epoch 10 so far), float64 factors and "
      "20 epochs (its README, \"The gap at ranks 3 and 9-12\").")


def blocks() -> dict[tuple[Path, str], str]:
  """Every block this script writes: (README, block name) -> text."""
  readme = EXPERIMENT / "README.md"
  return {(ROOT / "README.md", "cpac_mnist"): summary(),
          (readme, "gap"): gap_facts(),
          (readme, "selection"): selection_table(),
          (readme, "init"): init_block(),
          (readme, "float64"): float64_block(),
          (readme, "epochs20"): epochs20_block(),
          (readme, "official"): official_table(official_runs())}


def main(argv: list[str]) -> int:
  for arm in ("float64", "epochs20"):
    if "--check" not in argv and (EXPERIMENT / arm / "runs").exists():
      print(f"wrote {collect_epochs(EXPERIMENT / arm).relative_to(ROOT)}")
  stale = []
  for (path, name), text in blocks().items():
    if "--check" in argv:
      if report.block(path, name) != text:
        stale.append(f"{path.relative_to(ROOT)}: block {name!r}")
    else:
      report.splice(path, name, text)
      print(f"wrote {path.relative_to(ROOT)}: {name}")
  if stale:
    print("stale, rerun python scripts/cpac_gap.py:\n  "
          + "\n  ".join(stale))
  return 1 if stale else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
