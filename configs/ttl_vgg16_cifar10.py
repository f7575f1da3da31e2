"""VGG-16 on CIFAR-10: dense against TTL (Tucker classifier) against CP
convs. The TTL paper reports its VGG-16 simplified with TTL trains 10%
faster at comparable accuracy. And the trained dense net compressed
(`cpac_jax.compress`: every conv but the first and both hidden layers to
Tucker at 10x fewer weights, ranks shared globally or uniformly), then
fine-tuned 10 epochs.

CIFAR-10 can't be fetched on a machine that reaches only package registries:
put cifar-10-python.tar.gz in the data dir, then, on a GPU or TPU machine,

  python -m cpac_jax.sweep --config=configs/ttl_vgg16_cifar10.py \
      --workdir=experiments/ttl_vgg16_cifar10
"""

from cpac_jax.config import base_config, compress_config


def get_config(preset: str = ""):
  """`preset` "quick": 1 epoch on 512 examples of each variant, 1 seed."""
  config = base_config()
  config.name = "ttl_vgg16_cifar10"
  config.dataset.name = "cifar10"
  with config.dataset.ignore_type():  # per channel rather than one float
    config.dataset.mean = (0.4914, 0.4822, 0.4465)  # of x / 255
    config.dataset.std = (0.2470, 0.2435, 0.2616)
  config.model.name = "vgg16"
  config.model.factorization = "tucker"
  config.model.rank = 4                 # Tucker rank of (8,8,8)->(8,8,8) layers
  config.optimizer.name = "momentum"
  config.optimizer.learning_rate = 0.01
  config.batch_size = 128
  config.eval_batch_size = 500
  config.num_epochs = 60
  config.steps_per_call = 100
  config.paper = {}
  config.compress = compress_config()
  config.compress.exclude = ("convs/0", "out")
  seeds, tune_epochs = [0, 1, 2], 10
  if preset == "quick":
    config.num_epochs = 1
    config.num_train_examples = 512
    config.num_test_examples = 500
    config.batch_size = 64
    seeds, tune_epochs = [0], 1
  elif preset:
    raise ValueError(f"unknown preset {preset!r}; the only one is 'quick'")
  config.sweep = (
      {"model.factorization": ["dense"], "seed": seeds},
      {"model.factorization": ["tucker"], "model.rank": [4], "seed": seeds},
      {"model.factorization": ["cp"], "model.rank": [0.1], "seed": seeds},
      {"model.factorization": ["dense"], "compress.factorization": ["tucker"],
       "compress.budget": [0.1], "compress.allocation": ["global", "uniform"],
       "num_epochs": [tune_epochs], "optimizer.learning_rate": [0.001],
       "teacher": [f"num_epochs={config.num_epochs}, "
                   "optimizer.learning_rate=0.01"], "seed": seeds},
  )
  return config
