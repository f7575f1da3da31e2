"""Datasets as numpy arrays, with their facts: MNIST, Fashion-MNIST,
CIFAR-10 and the CPAC-Conv paper's Magnetic-Tile-Defect images; the
training-set caps and the input normalisation a config asks for.

Sources, in order:
  1. raw files in the data dir: the original IDX `.gz` files for MNIST and
     Fashion-MNIST (in `<data_dir>/<name>/` or `<data_dir>/`), the CIFAR-10
     python tarball `cifar-10-python.tar.gz` (or its extracted
     `cifar-10-batches-py/`); Magnetic-Tile-Defect as the official CPAC-CNN
     repository ships it, one folder of 100x100 grayscale PNGs per class
     (`<data_dir>/magnetic_tile/MT_*/`);
  2. a prepared TFDS data dir (`<data_dir>/<name>/<version>/`), read with
     `tfds.data_source`: no TensorFlow and no network needed.
The data dir is the `data_dir` argument, else `$CPAC_DATA_DIR`, else `data/`
in the working directory. When nothing is found, `load` raises at once,
naming the dataset, the places looked in and the command that fetches it;
it never goes to the network.
"""

import gzip
import os
import pickle
import tarfile
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["DATASETS", "INFO", "DataNotFoundError", "DatasetInfo", "InMemory",
           "Split", "data_dir", "load", "load_splits", "normalize"]


class DatasetInfo(NamedTuple):
  """What a model, and the training loop, must know of a dataset."""

  image_shape: tuple[int, ...]  # (H, W, C) of one example
  num_classes: int
  # No fixed test set: each run's seed draws its own train/test split.
  seeded_split: bool = False


INFO = {
    "mnist": DatasetInfo((28, 28, 1), 10),
    "fashion_mnist": DatasetInfo((28, 28, 1), 10),
    "cifar10": DatasetInfo((32, 32, 3), 10),
    "magnetic_tile": DatasetInfo((100, 100, 1), 6, seeded_split=True),
}
# Magnetic-Tile-Defect: its class folders, in label order (alphabetical, as
# torchvision's ImageFolder numbers them in the official code), and the
# share of images that train (the official code: int(0.85 * 663) = 563).
# The extensions torchvision's ImageFolder reads, compared in lower case.
IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif",
                    ".tiff", ".webp")
MAGNETIC_TILE_CLASSES = ("MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray",
                         "MT_Free", "MT_Uneven")
MAGNETIC_TILE_TRAIN_FRACTION = 0.85
DATASETS = tuple(INFO)
SPLITS = ("train", "test")
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_CIFAR_TARBALL = "cifar-10-python.tar.gz"
_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)],
                  "test": ["test_batch"]}


class DataNotFoundError(FileNotFoundError):
  """No source of a dataset was found in the data dir."""


class Split(NamedTuple):
  """One split: uint8 images (N, H, W, C) and int32 labels (N,)."""

  images: np.ndarray
  labels: np.ndarray


class InMemory(NamedTuple):
  """A dataset a caller brings itself (synthetic data, say): its splits and
  its facts."""

  train: Split
  test: Split
  info: DatasetInfo


def data_dir(path: str | os.PathLike | None = None) -> Path:
  """The data dir: `path`, else $CPAC_DATA_DIR, else ./data."""
  return Path(path or os.environ.get("CPAC_DATA_DIR") or "data")


def _read_idx(path: Path) -> np.ndarray:
  try:
    with gzip.open(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError) as error:  # not gzip, cut short, a folder
    raise ValueError(
        f"{path} can't be read ({error}); delete it and fetch it again "
        "(bash scripts/fetch_data.sh)") from None
  if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
    raise ValueError(f"{path} is not an IDX file of unsigned bytes")
  ndim = raw[3]
  shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big")
                for i in range(ndim))
  data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
  if data.size != int(np.prod(shape)):
    raise ValueError(
        f"{path} holds {data.size} values, its header says {shape}")
  return data.reshape(shape)


def _idx_split(name: str, split: str, root: Path) -> Split | None:
  for folder in (root / name, root):
    images, labels = (folder / f for f in _IDX_FILES[split])
    if images.exists() and labels.exists():
      x = _read_idx(images)[..., None]
      y = _read_idx(labels).astype(np.int32)
      if len(x) != len(y):
        raise ValueError(
            f"{folder}: {len(x)} images but {len(y)} labels in {split}")
      classes = INFO[name].num_classes
      if len(y) and y.max() >= classes:
        raise ValueError(
            f"{labels} holds label {int(y.max())}, outside {name}'s classes "
            f"0..{classes - 1}: the file is damaged or not {name}'s; fetch "
            "it again")
      return Split(x, y)
  return None


def _cifar_batches(split: str, root: Path):
  folder = root / _CIFAR_DIR
  if folder.is_dir():
    for batch in _CIFAR_BATCHES[split]:
      with open(folder / batch, "rb") as f:
        yield pickle.load(f, encoding="bytes")
    return
  with tarfile.open(root / _CIFAR_TARBALL, "r:gz") as tar:
    for batch in _CIFAR_BATCHES[split]:
      member = tar.extractfile(f"{_CIFAR_DIR}/{batch}")
      yield pickle.load(member, encoding="bytes")


def _cifar_split(split: str, root: Path) -> Split | None:
  for base in (root / "cifar10", root):
    if (base / _CIFAR_DIR).is_dir() or (base / _CIFAR_TARBALL).exists():
      images, labels = [], []
      for batch in _cifar_batches(split, base):
        # Rows of 3072 bytes: 1024 red, 1024 green, 1024 blue, row-major.
        images.append(np.asarray(batch[b"data"], np.uint8).reshape(
            -1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch[b"labels"], np.int32))
      return Split(np.concatenate(images), np.concatenate(labels))
  return None


def _magnetic_tile_split(split: str, root: Path, seed: int) -> Split | None:
  """The seed's random split of the class folders under
  `root/magnetic_tile`: images in ImageFolder order (class, then file name),
  permuted by RandomState(seed); the first 85% train, the rest test."""
  from PIL import Image  # slow import: only when needed

  folder = root / "magnetic_tile"
  present = [c for c in MAGNETIC_TILE_CLASSES if (folder / c).is_dir()]
  if not present:
    return None
  # The image files of each class, as torchvision's ImageFolder finds them
  # (its extensions, in any case); anything else in a folder is not an
  # image and is passed over, as ImageFolder does.
  files = {c: sorted((p for p in (folder / c).iterdir()
                      if p.suffix.lower() in IMAGE_EXTENSIONS),
                     key=lambda p: p.name) for c in present}
  counts = ", ".join(f"{c} {len(f)}" for c, f in files.items())
  missing = [c for c in MAGNETIC_TILE_CLASSES if c not in files]
  empty = [c for c, f in files.items() if not f]
  if missing or empty:
    raise ValueError(
        f"{folder} must hold the 6 class folders "
        f"{', '.join(MAGNETIC_TILE_CLASSES)}, each with images "
        f"({', '.join(IMAGE_EXTENSIONS)}); "
        + (f"missing: {', '.join(missing)}; " if missing else "")
        + (f"empty: {', '.join(empty)}; " if empty else "")
        + f"found: {counts}")
  images, labels = [], []
  for label, name in enumerate(MAGNETIC_TILE_CLASSES):
    for path in files[name]:
      with Image.open(path) as image:
        if image.mode != "L" or image.size != (100, 100):
          raise ValueError(
              f"{path} is a {image.size[0]}x{image.size[1]} {image.mode!r} "
              "image; Magnetic-Tile images are 100x100 grayscale ('L')")
        images.append(np.asarray(image, np.uint8)[..., None])
      labels.append(label)
  order = np.random.RandomState(seed).permutation(len(images))
  cut = int(MAGNETIC_TILE_TRAIN_FRACTION * len(images))
  chosen = order[:cut] if split == "train" else order[cut:]
  return Split(np.stack(images)[chosen], np.asarray(labels, np.int32)[chosen])


def _tfds_split(name: str, split: str, root: Path) -> Split | None:
  if not (root / name).is_dir():
    return None  # never let TFDS look further: it would go to the network
  versions = [p for p in (root / name).iterdir()
              if (p / "dataset_info.json").exists()]
  if not versions:
    return None
  import tensorflow_datasets as tfds  # slow import: only when needed

  source = tfds.data_source(name, split=split, data_dir=str(root),
                            download=False)
  examples = [source[i] for i in range(len(source))]
  images = np.stack([np.asarray(e["image"], np.uint8) for e in examples])
  labels = np.asarray([e["label"] for e in examples], np.int32)
  return Split(images, labels)


def fetch_hint(name: str) -> str:
  if name == "cifar10":
    return ("download cifar-10-python.tar.gz from the CIFAR-10 site into the "
            "data dir (it can't be fetched on a machine that reaches only "
            "package registries)")
  if name == "magnetic_tile":
    return ("run `bash scripts/fetch_data.sh magnetic_tile` (from the official "
            "CPAC-CNN repository)")
  return "run `bash scripts/fetch_data.sh` (MNIST and Fashion-MNIST)"


def load(name: str, split: str, data_dir_path: str | os.PathLike | None = None,
         seed: int = 0) -> Split:
  """Load one split of a dataset as uint8 images (N, H, W, C) and labels;
  `seed` draws the split of a dataset without a fixed one
  (`DatasetInfo.seeded_split`).

  Raises:
    ValueError: unknown dataset or split.
    DataNotFoundError: no source found; says where it looked and how to
      fetch the data.
  """
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
  root = data_dir(data_dir_path)
  if name == "cifar10":
    found = _cifar_split(split, root)
    looked = [root / "cifar10" / _CIFAR_TARBALL, root / _CIFAR_TARBALL]
  elif name == "magnetic_tile":  # not in TFDS
    found = _magnetic_tile_split(split, root, seed)
    looked = [root / "magnetic_tile" / "MT_*/ (6 class folders of PNGs)"]
  else:
    found = _idx_split(name, split, root)
    looked = [root / name / _IDX_FILES[split][0], root / _IDX_FILES[split][0]]
  if name != "magnetic_tile":
    found = found or _tfds_split(name, split, root)
    looked.append(root / name / "<version>/dataset_info.json (TFDS)")
  if found is None:
    places = ", ".join(str(p) for p in looked)
    raise DataNotFoundError(
        f"dataset {name!r} ({split}) not found; looked in {places}. To get "
        f"it, {fetch_hint(name)}, or point dataset.data_dir / "
        "$CPAC_DATA_DIR at a folder that has it.")
  return found


def load_splits(dataset, num_train: int = 0, num_test: int = 0, seed: int = 0
                ) -> tuple[Split, Split]:
  """The train and evaluation splits a config's `dataset` block names
  (`seed`'s, where it has no fixed split), each cut to its first
  `num_train` / `num_test` examples (0: all). With
  `dataset.validation_examples` N > 0, the evaluation split is the last N
  training examples, held out of training, and the test set is not read."""
  train = load(dataset.name, "train", dataset.get("data_dir"), seed)
  held_out = dataset.get("validation_examples") or 0  # None: unset
  if held_out:
    if held_out >= len(train.labels):
      raise ValueError(
          f"dataset.validation_examples {held_out} leaves nothing to train "
          f"on: {dataset.name} has {len(train.labels)} training examples")
    train, evaluation = (Split(*(a[:-held_out] for a in train)),
                         Split(*(a[-held_out:] for a in train)))
  else:
    evaluation = load(dataset.name, "test", dataset.get("data_dir"), seed)
  return _first(train, num_train), _first(evaluation, num_test)


def _first(split: Split, count: int) -> Split:
  return Split(*(a[:count] for a in split)) if count else split


def normalize(images: jax.Array, mean, std) -> jax.Array:
  """uint8 images -> float inputs (images / 255 - mean) / std; `mean` and
  `std` a number or one per channel."""
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (images.astype(jnp.float32) / 255.0 - mean) / std
