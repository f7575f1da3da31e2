"""python -m cpac_jax.interpret: the experiments behind
experiments/interpret/ (`cpac_jax.interpret.experiments.run`, and
`cpac_jax.interpret.validation.run` with --validate)."""

from pathlib import Path

from absl import app, flags

from cpac_jax.interpret import experiments, validation


def _main():
  sweep_dir = flags.DEFINE_string("sweep_dir", None,
                                  "a CPAC or TTL sweep's workdir")
  rank = flags.DEFINE_string("rank", None, "rank of the runs to read, JSON "
                             "(8, or [5, 5, 10])")
  synthetic = flags.DEFINE_bool("synthetic", False,
                                "run the synthetic TTL experiment")
  validate = flags.DEFINE_bool(
      "validate", False, "validate every TTL importance method against "
      "permutation ground truth (synthetic designs, MNIST, Fashion-MNIST)")
  seeds = flags.DEFINE_integer("seeds", 5, "seeds of the synthetic runs")
  dataset_seeds = flags.DEFINE_integer(
      "dataset_seeds", 3, "--validate: seeds of each MNIST-like data set")
  init = flags.DEFINE_string("init", None, "feature selection: only the "
                             "runs of this model.init (default: all)")
  random_orders = flags.DEFINE_integer(
      "random_orders", 20, "feature selection: random orders per model")
  redraw = flags.DEFINE_bool(
      "redraw", False, "rewrite the feature-selection and importance "
      "validation tables and plots in --out from their JSON numbers")
  out = flags.DEFINE_string("out", "experiments/interpret", "output folder")

  def main(argv):
    del argv
    if redraw.value:
      experiments.redraw(out.value)
      if (Path(out.value) / "importance_validation.json").exists():
        validation.redraw(out.value)
      return
    if validate.value:
      validation.run(out.value, seeds.value, dataset_seeds.value)
      return
    experiments.run(out.value, synthetic.value, sweep_dir.value, rank.value,
                    seeds.value, init.value, random_orders.value)

  app.run(main)


if __name__ == "__main__":
  _main()
