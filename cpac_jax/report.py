"""results.csv -> results.md (mean +- std over seeds, beside the paper's
numbers) and plots of accuracy against rank and against compression.

  python -m cpac_jax.report --config=configs/cpac_mnist.py \
      --workdir=experiments/cpac_mnist

If the workdir's README.md holds the markers `<!-- results:begin -->` and
`<!-- results:end -->`, the table is written between them too, so the
README's table is always the one the code produced.
"""

import json
import platform
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from cpac_jax import cli, rundir
from cpac_jax.config import expand, run_key
from cpac_jax.stats import (
  chance_best_of,
  interval95,
  joint_predictive,
  mean_std,
  percentile,
  predictive_t,
  seed_correlation,
)

__all__ = ["BEFORE_FINE_TUNING", "block", "chance_best_of",
           "collect_before_fine_tuning", "cpu_name", "interval95",
           "joint_predictive", "mixed_training_note", "percentile",
           "predictive_t", "seed_correlation", "splice", "summarize",
           "write_blocks", "write_report"]

# A sweep's record of its compressed runs' students before fine-tuning,
# beside results.csv: the run folders it is read from are not kept.
BEFORE_FINE_TUNING = "before_fine_tuning.csv"
_BEFORE_COLUMNS = ("key", "accuracy", "loss", "evaluated_on", "examples")


def collect_before_fine_tuning(workdir: str | Path, write: bool = True
                               ) -> dict[str, dict]:
  """{run key: {"accuracy", "loss", ...}}: each decomposed student of the
  sweep in `workdir` before its first step (its compression.json's
  "before_fine_tuning", `cpac_jax.extensions.CompressTeacher`), numbers as
  floats. Read from the run folders (`runs/<name>-<key>/`) where they are,
  from `workdir`/before_fine_tuning.csv where they are not (the folders
  are not committed); with `write`, that file is rewritten with both, in
  key order, if they change it."""
  workdir = Path(workdir)
  path = workdir / BEFORE_FINE_TUNING
  kept = rundir.read_csv(path)
  found = {row["key"]: row for row in kept}
  for report in sorted(workdir.glob("runs/*/compression.json")):
    before = json.loads(report.read_text()).get("before_fine_tuning")
    if before is not None:
      key = report.parent.name.rsplit("-", 1)[1]
      found[key] = {"key": key, **{k: str(v) for k, v in before.items()}}
  rows = [found[k] for k in sorted(found)]
  if write and rows != kept:
    rundir.write_rows(path, rows, _BEFORE_COLUMNS)
  return {key: {**row, "accuracy": float(row["accuracy"]),
                "loss": float(row["loss"])} for key, row in found.items()}



def cpu_name() -> str:
  """The processor's model name ("AMD EPYC", say) from /proc/cpuinfo, or
  the architecture where that is not to be had: benchmark ratios between
  libraries differ by processor, so the benchmark files name it."""
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _figure():
  """A 6.4 x 4.4 inch matplotlib Figure (no pyplot: files only, no
  display); matplotlib imported on first use, not by every process that
  imports this module."""
  from matplotlib.figure import Figure  # pylint: disable=C0415
  return Figure(figsize=(6.4, 4.4))


def _markers(name: str) -> tuple[str, str]:
  return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def block(path: str | Path, name: str) -> str:
  """The text of `path` between `<!-- NAME:begin -->` and
  `<!-- NAME:end -->`, without the newlines next to the markers; a
  ValueError naming the file and the markers when they are not there."""
  begin, end = _markers(name)
  body = Path(path).read_text()
  if (body.count(begin) != 1 or body.count(end) != 1
      or body.index(begin) > body.index(end)):
    raise ValueError(f"{path} has no single {begin} ... {end} block")
  return body.split(begin, 1)[1].split(end, 1)[0].strip("\n")


def splice(path: str | Path, name: str, text: str) -> None:
  """Write `text` into `path` between `<!-- NAME:begin -->` and
  `<!-- NAME:end -->` (each on a line of its own); a ValueError, with the
  file left as it was, when the markers are not there once each."""
  block(path, name)
  begin, end = _markers(name)
  body = Path(path).read_text()
  head, rest = body.split(begin, 1)
  Path(path).write_text(f"{head}{begin}\n{text}\n{end}{rest.split(end, 1)[1]}")


def write_blocks(blocks: dict[tuple[Path, str], str], argv: list[str],
                 command: str) -> int:
  """A block generator's command line: write each (README, name) -> text
  of `blocks` (`splice`), or with "--check" in `argv` write nothing and
  name each stale block with the `command` that rewrites it; returns the
  exit status (1: stale)."""
  stale = [f"{path}: block {name!r}" for (path, name), text in blocks.items()
           if "--check" in argv and block(path, name) != text]
  if "--check" not in argv:
    for (path, name), text in blocks.items():
      splice(path, name, text)
      print(f"wrote {path}: {name}")
  if stale:
    print(f"stale, rerun {command}:\n  " + "\n  ".join(stale))
  return 1 if stale else 0


def _rank_label(row: dict) -> str:
  if row["factorization"] == "dense":
    return "dense"
  rank = json.loads(row["rank"])
  return "x".join(map(str, rank)) if isinstance(rank, list) else str(rank)


# Sweep fields with a column of their own; the others a run's name sets make
# up its "setting".
_OWN_COLUMN = ("factorization", "rank", "init", "seed")


def _setting(row: dict) -> str:
  """What the run's sweep set besides factorization, rank, init and seed,
  from its name (e.g. "learning_rate=0.001, epochs=60"); "" if nothing."""
  parts = re.split(r"-(?=[A-Za-z_]\w*=)", row.get("run") or "")
  return ", ".join(p for p in parts
                   if "=" in p and p.split("=", 1)[0] not in _OWN_COLUMN)


def summarize(rows: list[dict]) -> list[dict]:
  """One entry per (init, factorization, rank, setting) with statistics
  over seeds; by init, dense last, the others from fewest parameters up.
  Rows from before the init column read as init "default"; their test loss
  and best epoch, not recorded then, as missing."""
  groups = defaultdict(list)
  for row in rows:
    groups[(row.get("init") or "default", row["factorization"],
            _rank_label(row), _setting(row))].append(row)
  summary = []
  for (init, factorization, rank, setting), group in groups.items():
    finals = [float(r["test_accuracy"]) for r in group]
    bests = [float(r["best_test_accuracy"]) for r in group]
    losses = [float(r["test_loss"]) for r in group if r.get("test_loss")]
    epochs = [int(r["best_epoch"]) for r in group if r.get("best_epoch")]
    summary.append({
        "init": init, "factorization": factorization, "rank": rank,
        "setting": setting, "seeds": len(group),
        "params": int(group[0]["params"]),
        "compression": float(group[0]["compression"]),
        "layer_compression": float(group[0]["layer_compression"]),
        "finals": finals, "bests": bests,
        "by_seed": {int(r["seed"]): float(r["test_accuracy"]) for r in group},
        "accuracy": mean_std(finals), "interval": interval95(finals),
        "best_accuracy": mean_std(bests),
        "best_epoch": statistics.median(epochs) if epochs else None,
        "test_loss": (statistics.fmean(losses) if len(losses) == len(group)
                      else None),
        "train_seconds": statistics.fmean(
            float(r["train_seconds"]) for r in group),
    })
  summary.sort(key=lambda s: (s["init"], s["factorization"] == "dense",
                              s["params"], s["setting"]))
  return summary


def _inits(summary: list[dict]) -> list[str]:
  """The inits of `summary`, in order; none named if all are "default"."""
  inits = list(dict.fromkeys(s["init"] for s in summary))
  return [] if inits == ["default"] else inits


def _table(summary: list[dict], paper: dict, paper_loss: dict,
           split: str = "test") -> str:
  with_init = bool(_inits(summary))
  with_setting = any(s["setting"] for s in summary)
  head = ["init"] * with_init + [
      "factorization", "rank"] + ["setting"] * with_setting + [
      "params", "compression (model)",
      "compression (factorized layers)", "seeds",
      f"{split} acc, final epoch: mean ± std", "95% interval of the mean",
      f"{split} acc, best epoch: mean ± std", "best epoch (median)",
      f"{split} loss, final epoch (mean)"]
  if paper:
    head += ["paper acc", "paper loss",
             "paper vs our final epochs: predictive t (two-sided p)",
             "paper's percentile among our seeds (final / best epoch)"]
  head.append("train s / run")
  lines = ["| " + " | ".join(head) + " |",
           "|" + "---|" * len(head)]
  for s in summary:
    interval = s["interval"]
    cells = [s["init"]] * with_init + [
        s["factorization"], s["rank"]] + [s["setting"]] * with_setting + [
        f"{s['params']:,}",
        f"{s['compression']:.2f}x",
        "-" if s["factorization"] == "dense"
        else f"{s['layer_compression']:.2f}x", str(s["seeds"]),
        _spread(s["accuracy"], s["seeds"]),
        "-" if interval is None else "{:.4f}-{:.4f}".format(*interval),
        _spread(s["best_accuracy"], s["seeds"]),
        "-" if s["best_epoch"] is None else f"{s['best_epoch']:g}",
        "-" if s["test_loss"] is None else f"{s['test_loss']:.4f}"]
    if paper:
      value, loss = paper.get(s["rank"]), paper_loss.get(s["rank"])
      found = None if value is None else predictive_t(s["finals"], value)
      cells += [
          "-" if value is None else f"{value:.4f}",
          "-" if loss is None else f"{loss:.4f}",
          "-" if found is None else "{:+.2f} ({:.2g})".format(*found),
          "-" if value is None else
          f"{percentile(s['finals'], value):.0f} / "
          f"{percentile(s['bests'], value):.0f}"]
    cells.append(f"{s['train_seconds']:.0f}")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + _joint_note(summary, paper)


def _spread(spread: tuple[float, float], n: int) -> str:
  """"mean ± std", or "value (n = 1)" where one run has no spread."""
  if n == 1:
    return f"{spread[0]:.4f} (n = 1)"
  return "{:.4f} ± {:.4f}".format(*spread)


def _joint_note(summary: list[dict], paper: dict) -> str:
  """What the per-setting predictive tests say together, per init."""
  notes = []
  for init in dict.fromkeys(s["init"] for s in summary):
    entries = [s for s in summary if s["init"] == init
               and paper.get(s["rank"]) is not None and len(s["finals"]) > 1]
    if len(entries) < 2:
      continue
    finals = [(s["finals"], paper[s["rank"]]) for s in entries]
    bests = [(s["bests"], paper[s["rank"]]) for s in entries]
    alone = joint_predictive(finals)
    if alone is None:
      continue
    rho = seed_correlation([s["by_seed"] for s in entries])
    seeds = min(s["seeds"] for s in entries)
    above = sum(paper[s["rank"]] > s["accuracy"][0] for s in entries)
    note = (
        f"{init} init: the paper's single run against our seeds, setting by "
        "setting, by the predictive t (the paper's run taken as one more "
        f"draw from the population of our runs); {len(entries)} tests, so a "
        f"p under {0.05 / len(entries):.2g} is what a Bonferroni correction "
        "keeps at 5%. The paper lies above our final-epoch mean at "
        f"{above} of {len(entries)} settings. Together (Stouffer's z of the "
        f"{len(entries)} tests): z = {alone[0]:.2f}, p = {alone[1]:.2g} on "
        "the final epoch (z = {:.2f}, p = {:.2g} on the best) were the "
        "settings independent".format(*joint_predictive(bests)[:2]))
    if rho is not None and rho <= 0:
      note += (f"; the mean correlation across seeds between settings' "
               f"final epochs is {rho:.2f} in our runs, so no correction "
               "for a shared seed is made")
    elif rho is not None:
      joint = joint_predictive(finals, rho)
      note += (
          "; but one seed moves every setting alike (the mean correlation "
          f"across seeds between settings' final epochs is {rho:.2f} in "
          "our runs, and the paper's runs share one seed), and allowing "
          f"for it z = {joint[0]:.2f}, p = {joint[1]:.2g}")
    notes.append(
        note + f". The range of n seeds holds one more draw with probability "
        f"(n-1)/(n+1): {100 * (seeds - 1) / (seeds + 1):.0f}% at n = "
        f"{seeds}.")
  return "".join(f"\n\n{n}" for n in notes)


def _plots(summary: list[dict], paper: dict, out: Path, title: str,
           split: str = "test") -> tuple[list[str], str]:
  """Accuracy against rank and against compression, one series per init
  and setting; `title` says what was trained (`plot_title`). Ranks are
  categories: their points are not joined, and the final-epoch, paper and
  best-epoch points of a rank stand side by side so none hides another.
  One run has no error bar: its label says n = 1. Returns the files'
  names and, where more than 4 series are named S1, S2, ... to keep the
  legend legible, the key to those names."""
  ranks = list(dict.fromkeys(s["rank"] for s in summary
                             if s["factorization"] != "dense"))
  series = [(f"{init} init" + (f", {setting}" if setting else ""),
             [s for s in summary if (s["init"], s["setting"]) == (init,
                                                                  setting)])
            for init, setting in dict.fromkeys((s["init"], s["setting"])
                                               for s in summary)]
  key, many = "", len(series) > 4
  if many:
    key = "Series in the plots: " + "; ".join(
        f"S{i} = {name}" for i, (name, _) in enumerate(series, 1)) + ".\n\n"
    series = [(f"S{i}", entries) for i, (_, entries) in enumerate(series, 1)]
  names = []  # of the files written
  width = 0.6 / (2 * len(series) + 1)  # each series' two points, the paper

  fig = _figure()
  ax = fig.subplots()
  for color, (name, entries) in enumerate(series):
    label = f" {name}" if len(series) > 1 else ""
    factorized = [s for s in entries if s["factorization"] != "dense"]
    x = np.array([ranks.index(s["rank"]) for s in factorized], float)
    shift = (color + 1) * width
    if factorized:  # a series of dense runs only is its line alone
      ax.errorbar(x - shift, [s["accuracy"][0] for s in factorized],
                  yerr=_bars([s["accuracy"] for s in factorized], factorized),
                  marker="o", ls="none", capsize=3, color=f"C{color}",
                  label=f"ours{label}, final epoch"
                  f"{_spread_label(factorized)}")
      ax.plot(x + shift, [s["best_accuracy"][0] for s in factorized], "s",
              ms=5, mfc="none", color=f"C{color}",
              label=None if many else f"ours{label}, best epoch (mean)")
    for s in entries:
      if s["factorization"] == "dense":
        ax.axhline(s["accuracy"][0], color=f"C{color}", ls=":",
                   label=None if many else
                   f"dense{label}, final epoch ({s['accuracy'][0]:.4f}, "
                   f"n = {s['seeds']})")
  known = [(i, paper[rank]) for i, rank in enumerate(ranks) if rank in paper]
  if known:
    ax.plot(*zip(*known), "k^", ms=7, label="paper (one run)")
  ax.set_xticks(range(len(ranks)), ranks, rotation=45 if len(ranks) > 8 else 0)
  ax.set_xlabel("rank (a category; each rank's points side by side: ours "
                "final, paper, ours best)" if known else
                "rank (a category; final and best epoch side by side)"
                + ("\nfilled: final epoch; open: best epoch; dotted: dense"
                   if many else ""), fontsize=8)
  ax.set_ylabel(f"{split} accuracy")
  names.append(_save(fig, ax, title, out / "accuracy_vs_rank.png", many))

  fig = _figure()
  ax = fig.subplots()
  for color, (name, entries) in enumerate(series):
    label = f"ours, {name}" if len(series) > 1 else "ours"
    factorized = [s for s in entries if s["factorization"] != "dense"]
    if factorized:
      ax.errorbar([s["layer_compression"] for s in factorized],
                  [s["accuracy"][0] for s in factorized],
                  yerr=_bars([s["accuracy"] for s in factorized], factorized),
                  marker="o", capsize=3, color=f"C{color}",
                  label=f"{label}, final epoch{_spread_label(factorized)}")
    for s in factorized:
      ax.annotate(s["rank"], (s["layer_compression"], s["accuracy"][0]),
                  fontsize=7, textcoords="offset points", xytext=(3, 3))
    for s in entries:
      if s["factorization"] == "dense":
        ax.axhline(s["accuracy"][0], color=f"C{color}", ls=":",
                   label=None if many else
                   f"dense{', ' + name if len(series) > 1 else ''}"
                   f" (n = {s['seeds']})")
  ax.set_xscale("log")
  ax.set_xlabel("compression of the factorized layers (dense / ours); "
                "points labelled by rank" + ("; dotted: dense" if many else ""),
                fontsize=8)
  ax.set_ylabel(f"{split} accuracy (final epoch)")
  names.append(_save(fig, ax, title, out / "accuracy_vs_compression.png",
                     many))
  return names, key


def _bars(mean_stds: list[tuple[float, float]], entries: list[dict]):
  """Error bars of one std; none for a single run."""
  return [0.0 if s["seeds"] == 1 else std
          for (_, std), s in zip(mean_stds, entries)]


def _spread_label(entries: list[dict]) -> str:
  """How a series' points spread: the std over n seeds, or n = 1."""
  counts = sorted({s["seeds"] for s in entries})
  if counts == [1]:
    return " (n = 1, no error bar)"
  return f" (mean ± std, n = {_span(counts)}" + (
      "; n = 1: no bar)" if counts[0] == 1 else ")")


def plot_title(config: ml_collections.ConfigDict, summary: list[dict],
               split: str = "test") -> str:
  """What a plot shows: the experiment, data set, model, metric, how long
  the runs of its sweep trained, and the runs per point."""
  runs = [run for _, run in expand(config)]
  name = config.get("name") or "results"
  return (f"{name}: {config.model.name} on {config.dataset.name}, "
          f"{split} accuracy\n{_span(r.num_epochs for r in runs)} epochs "
          f"at batch {_span(r.batch_size for r in runs)}, n = "
          f"{_span(s['seeds'] for s in summary)} runs a point")


def _span(values) -> str:
  """'10', or '3-10' where the values differ."""
  values = sorted(set(values))
  return (f"{values[0]}" if len(values) == 1
          else f"{values[0]}-{values[-1]}")


def _save(fig, ax, title: str, path: Path, outside: bool = False) -> str:
  """Title, legend (beside the axes if `outside`), layout; write the figure
  to `path`, return its name."""
  ax.set_title(title, fontsize=9)
  if outside:
    fig.set_figwidth(fig.get_figwidth() + 2.5)
    ax.legend(fontsize=6, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1))
  else:
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  return path.name


def write_report(workdir: str | Path, config: ml_collections.ConfigDict
                 ) -> Path:
  """Merge the workdir's results files into results.csv, then write
  results.md and the plots beside it; return results.md. Runs of the
  config's sweep with no row yet are listed as missing."""
  workdir = Path(workdir)
  results = workdir / "results.csv"
  rows = rundir.read_results(workdir)
  if not rows:
    raise ValueError(f"{workdir} holds no results*.csv rows to report")
  runs = expand(config)
  rundir.check_rows(workdir, runs)
  runs = [(name, run_key(run)) for name, run in runs]
  rundir.write_rows(results, rows)
  present = {row["key"] for row in rows}
  missing = [name for name, key in runs if key not in present]
  paper = dict(config.get("paper") or {})
  paper_loss = dict(config.get("paper_loss") or {})
  failed = [r for r in rows if r.get("status", "ok") != "ok"]
  rows = [r for r in rows if r.get("status", "ok") == "ok"]
  if not rows:
    raise ValueError(f"{results} holds no finished runs to report")
  splits = {row.get("evaluated_on") or "test" for row in rows}
  if len(splits) > 1:
    raise ValueError(
        f"{results} mixes runs evaluated on the test set and on validation "
        "examples held out of training; keep them in separate workdirs")
  split, = splits
  summary = summarize(rows)
  out = results.parent
  title = config.get("name") or out.name
  if split != "test":  # the paper's numbers are test accuracies
    paper, paper_loss = {}, {}
  table = _table(summary, paper, paper_loss, split)
  plots, key = _plots(summary, paper, out,
                      plot_title(config, summary, split), split)
  failures = "".join(
      f"- {r.get('run', '?')}: {r['status']}, left out of the table\n"
      for r in failed) + "".join(f"- {name}: missing, not run yet\n"
                                 for name in missing)
  seconds = sum(float(r["train_seconds"]) for r in rows)
  text = (f"# {title}: results\n\n"
          + mixed_training_note(rows)
          + f"{len(rows)} runs from `{results.name}`, {seconds:,.0f} s of "
          "training in all (their train_seconds). Over seeds: mean ± "
          "sample std (ddof=1) and the 95% Student-t interval of the mean; "
          "the paper's single run placed among our seeds (the percentile: "
          "the share of our runs below it, ties half).\n\n"
          f"{table}\n\n" + (f"Not in the table:\n{failures}\n" if failures
                              else "")
          + key + "\n".join(f"![{p}]({p})" for p in plots) + "\n")
  path = out / "results.md"
  path.write_text(text)
  readme = out / "README.md"
  if readme.exists() and _markers("results")[0] in readme.read_text():
    splice(readme, "results", table)
  return path


def mixed_training_note(rows: list[dict]) -> str:
  """A paragraph when `rows` mix runs trained alone and vectorized (their
  "trained" column), else ""."""
  kinds = {r.get("trained", "").split(" ")[0] for r in rows} - {""}
  if len(kinds) < 2:
    return ""
  return ("These rows mix runs trained alone and runs trained vectorized "
          "(the `trained` column of the results file): the two compute in "
          "another order of float sums, so one run's numbers differ "
          "between them in about the 4th decimal.\n\n")


def _main():
  config = config_flags.DEFINE_config_file("config", None, "experiment config")
  workdir = flags.DEFINE_string("workdir", None, "folder with results.csv")

  def main(argv):
    del argv
    try:
      print(write_report(workdir.value, config.value))
    except (ValueError, OSError) as error:
      sys.exit(cli.error_line(error))  # one line, exit status 1

  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  _main()
