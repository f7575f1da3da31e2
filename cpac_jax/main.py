"""One training run from a config.

  python -m cpac_jax.main --config=configs/cpac_mnist.py --workdir=runs/x \
      --config.model.rank=5
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from cpac_jax import cli, data, process, train


def _main():
  process.restart_with_huge_pages()  # before anything: glibc reads it at start
  config = config_flags.DEFINE_config_file("config", None, "experiment config")
  workdir = flags.DEFINE_string("workdir", None, "where the run writes")

  def main(argv):
    del argv
    process.reuse_host_memory()
    try:
      result = train.train_and_evaluate(config.value, workdir.value)
    except (ValueError, OSError, data.DataNotFoundError, train.Diverged,
            train.Preempted, KeyboardInterrupt) as error:
      sys.exit(cli.error_line(error))  # one line, exit status 1
    print(f"test accuracy {result['test_accuracy']:.4f} with "
          f"{result['params']:,} parameters ({result['compression']:.2f}x "
          f"fewer than dense); written to {workdir.value}")

  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":  # flags only here: importing defines none
  _main()
