"""CPAC-CNN, two CP conv layers, MNIST: the CPAC-Conv paper's main table.

The paper's setup (official code): CPAC(1->8, 3x3) -> maxpool 2 -> ReLU ->
CPAC(8->8, 3x3) -> maxpool 2 -> ReLU -> FC(200->50) -> FC(50->10); Adam
1e-4, 10 epochs, batch size 1, inputs normalised with mean 0.5 and std 0.5;
CP ranks 1..12 against the dense net; 3 seeds here.

  python -m cpac_jax.sweep --config=configs/cpac_mnist.py \
      --workdir=experiments/cpac_mnist
  python -m cpac_jax.sweep --config=configs/cpac_mnist.py:quick \
      --workdir=runs/cpac_mnist_quick     # a few minutes on 2 CPU cores
"""

from cpac_jax.config import base_config

# The official repository's numbers (wyn430/CPAC-CNN,
# CPAC-CNN-GPU/result_viz/plot.ipynb, cell 2; one run each, seed 48): test
# accuracy and test loss by CP rank. The paper prints the two-layer
# table; the notebook has the one-layer ranks 1-6 too.
PAPER = {  # by (dataset, conv layers)
    ("mnist", 2): {
        "1": 0.9278, "2": 0.9679, "3": 0.9774, "4": 0.9788, "5": 0.9805,
        "6": 0.9767, "7": 0.9801, "8": 0.9800, "9": 0.9830, "10": 0.9833,
        "11": 0.9815, "12": 0.9842, "dense": 0.9844},
    ("mnist", 1): {
        "1": 0.9518, "2": 0.9669, "3": 0.9677, "4": 0.9773, "5": 0.9782,
        "6": 0.9782, "dense": 0.9794},
    # Magnetic-Tile-Defect, from the same notebook's cell 1 (100 test
    # images, so accuracies in steps of 0.01).
    ("magnetic_tile", 2): {
        "1": 0.93, "2": 0.92, "3": 0.94, "4": 0.96, "5": 0.94, "dense": 0.96},
    ("magnetic_tile", 1): {
        "1": 0.94, "2": 0.94, "3": 0.93, "4": 0.92, "5": 0.95, "dense": 0.93},
}
PAPER_LOSS = {
    ("mnist", 2): {
        "1": 0.2436, "2": 0.1069, "3": 0.0750, "4": 0.0645, "5": 0.0623,
        "6": 0.0691, "7": 0.0607, "8": 0.0632, "9": 0.0533, "10": 0.0523,
        "11": 0.0625, "12": 0.0506, "dense": 0.0484},
    ("mnist", 1): {
        "1": 0.1674, "2": 0.1151, "3": 0.1166, "4": 0.0788, "5": 0.0745,
        "6": 0.0701, "dense": 0.0693},
    ("magnetic_tile", 2): {
        "1": 0.3106, "2": 0.3936, "3": 0.3030, "4": 0.2890, "5": 0.3087,
        "dense": 0.2953},
    ("magnetic_tile", 1): {
        "1": 0.3945, "2": 0.3446, "3": 0.2963, "4": 0.3697, "5": 0.2852,
        "dense": 0.3410},
}
# The presets of the two-layer gap study's cpac_jax arms (`build`).
ARMS = ("float64", "epochs20")
RANKS = {("mnist", 2): list(range(1, 13)), ("mnist", 1): list(range(1, 7)),
         ("magnetic_tile", 2): list(range(1, 6)),
         ("magnetic_tile", 1): list(range(1, 6))}


def build(preset: str, num_layers: int, dataset: str = "mnist"):
  """The CPAC-CNN config with `num_layers` CP conv layers on `dataset`
  ("mnist" or "magnetic_tile").

  `preset` "quick": ranks 1, 2, 4 and the largest, and dense, 1 seed, 2
  epochs at batch size 32 and learning rate 1e-3: the whole pipeline in a
  few minutes. "one_seed": the full sweep, seed 0 only (the same runs, by
  run key, as the full sweep's seed-0 runs). "default_init": the runs with
  cpac_jax's own initialisation only (ranks and dense, 3 seeds);
  "default_seed0" those of seed 0 (what `cpac_jax.benchmarks.sweep` times).

  The arms of the two-layer gap study (experiments/cpac_mnist/README.md),
  official init, seeds 0-9, each in its own workdir: "float64", ranks 9-12
  with the CP factors and their Adam state in float64 as the official code
  holds them (run with JAX_ENABLE_X64=1); "epochs20", every setting trained
  20 epochs instead of 10.
  """
  config = base_config()
  config.name = f"cpac_{dataset}" + ("" if num_layers == 2 else "_1layer")
  config.dataset.name = dataset
  config.model.name = f"cpac_cnn_{num_layers}"
  config.model.factorization = "cp"
  config.model.rank = 5                 # CP rank of every conv layer
  # The committed results ran the rebuilt kernel and one conv, which was
  # the faster path at batch size 1 when they were made; the factorized
  # path's depthwise steps have since become fused strided slices, but the
  # setting is part of every run's key, so it stays as the results ran.
  config.model.implementation = "reconstructed"
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 1e-4
  config.batch_size = 1                 # as the paper trains
  # Evaluation in batches small enough that a vectorized sweep's models keep
  # their activations in cache (at the default 1,000, seven stacked nets'
  # first conv outputs alone take 7 * 1,000 * 26 * 26 * 8 floats, 150 MB);
  # not in the run key: it changes how fast the test set is read, not what
  # is computed.
  config.eval_batch_size = 20
  config.num_epochs = 10
  config.paper = PAPER[dataset, num_layers]
  config.paper_loss = PAPER_LOSS[dataset, num_layers]
  # The table headlines the official code's initialisation (model.init
  # "official", cpac_jax.models.official_init), 10 seeds; cpac_jax's own
  # ("default") is kept at 3 seeds. Chosen before either was run at 10.
  seeds = {"official": list(range(10)), "default": [0, 1, 2]}
  if dataset == "magnetic_tile":
    # 563 training images, each seed its own random 85/15 split. The
    # official epoch count is a command-line argument, not recorded (its
    # saved model is from epoch 21): 30, fixed before any run, not tuned;
    # the table gives the final and the best epoch. Official init only.
    config.num_epochs = 30
    seeds = {"official": list(range(10))}
  ranks = RANKS[dataset, num_layers]
  if preset == "quick":
    # Its own name, so its plots and table say it is not the paper's
    # protocol when they set it beside the paper's numbers.
    config.name += "_quick"
    config.batch_size = 32
    config.optimizer.learning_rate = 1e-3
    config.num_epochs = 2
    seeds, ranks = {"default": [0]}, [1, 2, 4, ranks[-1]]
  elif preset == "one_seed":
    seeds = {"official": [0], "default": [0]}
  elif preset in ARMS and dataset == "mnist" and num_layers == 2:
    seeds = {"official": list(range(10))}
    if preset == "float64":
      config.model.kwargs = {"factor_dtype": "float64"}
      ranks = [9, 10, 11, 12]
    else:
      config.num_epochs = 20
  elif preset == "default_init" and "default" in seeds:
    seeds = {"default": seeds["default"]}
  elif preset == "default_seed0" and "default" in seeds:
    seeds = {"default": [0]}
  elif preset:
    presets = ["quick", "one_seed"] + (
        ["default_init", "default_seed0"] if "default" in seeds else []) + (
        list(ARMS) if (dataset, num_layers) == ("mnist", 2) else [])
    raise ValueError(f"unknown preset {preset!r}; choose one of {presets}")
  sweep = []
  for init, init_seeds in seeds.items():
    # "default" is left unset, so those runs keep their keys from before
    # model.init existed.
    init_field = {} if init == "default" else {"model.init": [init]}
    sweep += [{"model.factorization": ["cp"], "model.rank": ranks,
               "seed": init_seeds, **init_field},
              {"model.factorization": ["dense"], "seed": init_seeds,
               **init_field}]
  if preset == "float64":  # CP runs only: a dense net has no factors
    sweep = [{"model.factorization": ["cp"], "model.rank": ranks,
              "seed": seeds["official"], "model.init": ["official"]}]
  config.sweep = tuple(sweep)
  return config


def get_config(preset: str = ""):
  return build(preset, num_layers=2)
