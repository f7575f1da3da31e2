"""The t3f tutorial's anchor ("Tensor Nets", docs/tutorials/tensor_nets.ipynb
of Bihaqo/t3f at abd4f77d, its last version): a trained MNIST MLP's 784x625
hidden layer made a TT-matrix of TT rank 16, before and after fine-tuning
(published, one run: the dense net 0.9714 after 5 epochs, the TT net 0.6443
before fine-tuning and 0.9765 after 2 epochs, `T3F` below); here by
`cpac_jax.compress(..., factorization="tt")`, plain and data-aware, beside
the low-rank "svd" at the same weights, plain and data-aware.

t3f's protocol, kept: Flatten -> Dense(625, ReLU) -> Dense(10) (the
`ttl_mlp` model, dense); pixels x / 127.5 - 1; Adam at 1e-3, constant, in
batches of 64; the dense net 5 epochs, then the hidden layer compressed
(the classifier kept dense) and the whole net fine-tuned 2 epochs, a fresh
Adam at 1e-3. Rank 16 over the TT-matrix's 4 modes keeps 14,960 of the
layer's 490,000 weights (32.8x), the budget here; t3f's tensor shape is
(7, 4, 7, 4) x (5, 5, 5, 5), ours `compression.tt_shapes`'s (7, 7, 4, 4) x
(5, 5, 5, 5), of the same weight count at rank 16. No hyperparameter is
chosen here: all are t3f's, so every run is evaluated on the test set, as
t3f's were.

  python -m cpac_jax.sweep --config=configs/compress_t3f_mnist.py \\
      --workdir=experiments/compress_t3f_mnist
  python scripts/t3f_table.py
"""

from cpac_jax.config import base_config, compress_config

DENSE_EPOCHS, TUNE_EPOCHS = 5, 2
TT_RANK16_WEIGHTS = 14960  # 35*16 + 35*16*16 + 20*16*16 + 20*16
CALIBRATION_EXAMPLES = 1024
# The tutorial's printed test accuracies (Keras' validation_data is the
# test set there), one run each.
T3F = {"dense": 0.9714, "tt_before": 0.6443, "tt_after": 0.9765}


def get_config(preset: str = ""):
  """`preset` "quick": 1 epoch each on 2,048 examples, 1 seed."""
  config = base_config()
  config.name = "compress_t3f_mnist"
  config.dataset.name = "mnist"
  config.model.name = "ttl_mlp"
  config.model.factorization = "dense"
  config.model.rank = 0                 # unused: compressed after training
  config.model.kwargs = {"hidden_shape": (625,)}
  config.compress = compress_config()
  config.compress.factorization = ""    # each sweep group sets its own
  config.compress.budget = TT_RANK16_WEIGHTS
  config.compress.exclude = ("out",)
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 1e-3
  config.batch_size = 64
  seeds = [0, 1, 2, 3, 4]
  dense_epochs, tune_epochs = DENSE_EPOCHS, TUNE_EPOCHS
  if preset == "quick":
    config.num_train_examples = 2048
    config.num_test_examples = 1000
    seeds, dense_epochs, tune_epochs = [0], 1, 1
  elif preset:
    raise ValueError(f"unknown preset {preset!r}; valid: 'quick'")
  config.num_epochs = dense_epochs
  teacher = f"num_epochs={dense_epochs}"
  sweep = []
  for seed in seeds:  # a seed's runs together, its dense teacher first
    sweep += [
        {"seed": [seed]},
        {"compress.factorization": ["tt"], "num_epochs": [tune_epochs],
         "teacher": [teacher], "seed": [seed]},
        {"compress.factorization": ["tt"],
         "compress.calibration_examples": [CALIBRATION_EXAMPLES],
         "num_epochs": [tune_epochs], "teacher": [teacher], "seed": [seed]},
        {"compress.factorization": ["svd"],
         "compress.calibration_examples": [0, CALIBRATION_EXAMPLES],
         "num_epochs": [tune_epochs], "teacher": [teacher], "seed": [seed]},
    ]
  config.sweep = tuple(sweep)
  return config
