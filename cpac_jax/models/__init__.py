"""Models of the papers, and a registry that builds them from a config."""

import difflib

import jax.numpy as jnp
import ml_collections
from flax import nnx

from cpac_jax.layers import CPConv, TuckerDense
from cpac_jax.models import cpac_cnn
from cpac_jax.models.cnn import CNN
from cpac_jax.models.cpac_cnn import CPACNet
from cpac_jax.models.params import count_factorized, parameter_counts
from cpac_jax.models.ttl_mlp import TTLMLP
from cpac_jax.models.vgg import VGG16
from cpac_jax.models.vit import ViT

__all__ = ["CNN", "CPACNet", "DEFAULT_DTYPE", "DEFAULT_INIT", "DTYPES", "INITS",
           "MODELS", "TTLMLP", "VGG16", "ViT", "build", "count_factorized",
           "from_teacher", "parameter_counts"]

# name -> (constructor, the factorizations it takes, fixed keyword arguments)
MODELS = {
    "cpac_cnn_1": (CPACNet, ("cp", "tucker", "tt", "dense"),
                   {"num_layers": 1}),
    "cpac_cnn_2": (CPACNet, ("cp", "tucker", "tt", "dense"),
                   {"num_layers": 2}),
    "ttl_mlp": (TTLMLP, ("tucker", "tt", "dense"), {}),
    "vgg16": (VGG16, ("dense", "tucker", "cp"), {}),
    "cnn": (CNN, ("dense", "cp", "tucker", "tt"), {}),
    "vit": (ViT, ("dense",), {}),  # compressed by config.compress
}
DEFAULT_INIT = "default"  # model.init unset: the layers' own init
# name -> the initialisations (`model.init`) it offers, "default" first;
# "teacher" (`from_teacher`, applied by the trainer) where its layers are
# attributes `from_teacher` reaches.
INITS = {"cpac_cnn_1": cpac_cnn.INITS, "cpac_cnn_2": cpac_cnn.INITS,
         "ttl_mlp": ("default", "teacher")}
# The compute dtypes a model may run in (`config.dtype`), the default first:
# every layer's matmuls, convs and activations in it; parameters, batch-norm
# statistics and so optimizer state stay float32.
DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_DTYPE = DTYPES[0]


def check(model: ml_collections.ConfigDict) -> None:
  """Raise ValueError for an unknown model name or factorization."""
  if model.name not in MODELS:
    close = difflib.get_close_matches(str(model.name), MODELS, n=2)
    hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
    raise ValueError(
        f"unknown model.name {model.name!r}{hint}; choose one of "
        f"{tuple(MODELS)}")
  _, factorizations, _ = MODELS[model.name]
  if model.factorization not in factorizations:
    raise ValueError(
        f"model {model.name!r} takes model.factorization in {factorizations}, "
        f"got {model.factorization!r}")
  inits = INITS.get(model.name, (DEFAULT_INIT,))
  if (model.get("init") or DEFAULT_INIT) not in inits:  # None: unset
    raise ValueError(f"model {model.name!r} takes model.init in {inits}, got "
                     f"{model.init!r}")


def build(model: ml_collections.ConfigDict, input_shape, num_classes: int,
          rngs: nnx.Rngs, seed: int = 0, dtype: str = DEFAULT_DTYPE
          ) -> nnx.Module:
  """The model a config's `model` block names, for inputs (H, W, C); `seed`
  (the run's) seeds what an init other than "default" draws outside JAX;
  `dtype` (one of `DTYPES`) is every layer's compute dtype."""
  check(model)
  if dtype not in DTYPES:
    raise ValueError(f"unknown dtype {dtype!r}; choose one of {DTYPES}")
  constructor, _, fixed = MODELS[model.name]
  kwargs = dict(model.get("kwargs", {}))
  if (model.get("init") or DEFAULT_INIT) not in (DEFAULT_INIT, "teacher"):
    kwargs.update(init=model.init, init_seed=seed)
  rank = model.rank
  if isinstance(rank, list):
    rank = tuple(rank)
  return constructor(factorization=model.factorization, rank=rank,
                     input_shape=tuple(input_shape), num_classes=num_classes,
                     implementation=model.get("implementation", "auto"),
                     dtype=jnp.dtype(dtype), rngs=rngs, **fixed, **kwargs)


def from_teacher(student: nnx.Module, teacher: nnx.Module) -> nnx.Module:
  """`student` (changed in place, and returned) with each factorized layer
  decomposed from the trained dense layer the `teacher` holds under the same
  attribute (`TuckerDense.from_linear`, `CPConv.from_conv`, at the student
  layer's rank) and every other layer's state copied from the teacher's.

  Raises:
    ValueError: a layer of the student with no counterpart in the teacher.
  """
  for name, layer in list(vars(student).items()):
    if not isinstance(layer, nnx.Module):
      continue
    if isinstance(layer, nnx.List):  # would copy a Conv's state onto a CPConv
      raise ValueError(
          f"from_teacher: the student's {name!r} is a list of layers; only "
          "layers held as attributes are decomposed (models.INITS says "
          "which models take init 'teacher')")
    source = getattr(teacher, name, None)
    if isinstance(layer, TuckerDense) and isinstance(source, nnx.Linear):
      setattr(student, name, TuckerDense.from_linear(
          source, in_shape=layer.in_shape, out_shape=layer.out_shape,
          rank=layer.rank, implementation=layer.implementation))
    elif isinstance(layer, CPConv) and isinstance(source, nnx.Conv):
      setattr(student, name, CPConv.from_conv(
          source, layer.rank, implementation=layer.implementation))
    elif type(source) is type(layer):
      nnx.update(layer, nnx.state(source))
    else:
      raise ValueError(
          f"from_teacher: the student's {name!r} ({type(layer).__name__}) "
          "has no counterpart in the teacher (it holds "
          f"{type(source).__name__}); a teacher must be the student's dense "
          "twin")
  return student
