"""Fixtures: tiny data sets written in the real file formats; one
compilation cache for the whole session; the `slow` mark on every test
that trains on such a data set (end to end) and on the docstrings'
examples, beside the tests marked slow by hand (a few seconds or more
each: `pytest -m "not slow"` is the fast path)."""

import gzip
import importlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile

import jax
import numpy as np
import pytest

from cpac_jax import process
from cpac_jax.config import override

# Many tests compile the same small programs again (each run, each
# subprocess): a persistent cache, shared with the subprocesses (and xdist
# workers) through the environment, compiles each once. Made by the process
# that starts the session, removed when it ends.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix="jax-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# LLVM's default optimization level takes tens of seconds on this jaxlib's
# CPU to compile one random draw of a 4-D shape (a conv kernel's init: 46 s
# for a normal of shape (3, 3, 8, 12) on our 2-core machine under load,
# 0.8 s at level 1; 1-D and 2-D draws of the same size take under one
# second at either). Tests compile far more than they run: level 1, also
# for their subprocesses (which read XLA_FLAGS when their backend starts).
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_backend_optimization_level=1").strip()
# The command lines restart themselves with glibc's malloc asked for huge
# pages (`process.restart_with_huge_pages`) unless it is asked already:
# asked here, so a test's subprocess does not import everything twice.
os.environ.update(process.huge_pages_env(os.environ) or {})
jax.config.update("jax_compilation_cache_dir",
                  os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# A test given one of these trains (or reads) a data set end to end.
_DATA_FIXTURES = {"mnist_dir", "shared_mnist_dir", "cifar_dir",
                  "magnetic_tile_dir"}


def pytest_collection_modifyitems(items):
  for item in items:
    if (_DATA_FIXTURES & set(getattr(item, "fixturenames", ()))
        # the docstrings' examples run whole models op by op
        or type(item).__name__ == "DoctestItem"):
      item.add_marker(pytest.mark.slow)


def pytest_sessionfinish(session, exitstatus):
  if _OWN_CACHE is not None:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)


def load_config(name: str, preset: str = ""):
  """configs/NAME.py's config, the package module configs.NAME's."""
  return importlib.import_module(f"configs.{name}").get_config(preset)


def tiny(config, data_dir, **overrides):
  config.dataset.data_dir = str(data_dir)
  config.num_epochs = 3
  config.batch_size = 16
  config.steps_per_call = 10
  config.optimizer.learning_rate = 3e-3
  for field, value in overrides.items():
    override(config, field, value)
  return config


def write_idx(path, array: np.ndarray) -> None:
  """An IDX file of unsigned bytes, gzipped, as MNIST ships."""
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
      int(n).to_bytes(4, "big") for n in array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def learnable_images(labels: np.ndarray, size: int, channels: int,
                     seed: int) -> np.ndarray:
  """Noise plus a bright block whose position is the label: learnable in a
  few steps, so a training test can demand high accuracy."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 60, (len(labels), size, size, channels))
  block = size // 5
  for i, label in enumerate(labels):
    row, col = divmod(int(label), 5)
    images[i, row * block * 2:row * block * 2 + block,
           col * block:(col + 1) * block] = 255
  return images.astype(np.uint8)


def write_mnist(root):
  """A data dir `root` holding a tiny 'mnist' in the original IDX format."""
  folder = root / "mnist"
  folder.mkdir(parents=True)
  for split, n, seed in (("train", 512, 0), ("t10k", 256, 1)):
    labels = np.random.default_rng(seed).integers(0, 10, n)
    images = learnable_images(labels, 28, 1, seed)[..., 0]
    write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
    write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
  return root


@pytest.fixture
def mnist_dir(tmp_path):
  """A tiny 'mnist' of this test's own, which it may damage."""
  return write_mnist(tmp_path / "data")


@pytest.fixture(scope="module")
def shared_mnist_dir(tmp_path_factory):
  """The same tiny 'mnist', shared by a module's tests: read it only."""
  return write_mnist(tmp_path_factory.mktemp("data"))


@pytest.fixture
def cifar_dir(tmp_path):
  """A data dir holding a tiny CIFAR-10 python tarball, in its real format:
  pickled dicts of b'data' (N, 3072) rows, channel-major, and b'labels'."""
  root = tmp_path / "data"
  root.mkdir()
  with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
    batches = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(batches):
      labels = np.random.default_rng(i).integers(0, 10, 40)
      images = learnable_images(labels, 32, 3, i)
      rows = images.transpose(0, 3, 1, 2).reshape(len(labels), 3072)
      payload = pickle.dumps({b"data": rows, b"labels": labels.tolist()})
      info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
      info.size = len(payload)
      tar.addfile(info, io.BytesIO(payload))
  return root


@pytest.fixture
def magnetic_tile_dir(tmp_path):
  """A data dir holding a tiny Magnetic-Tile-Defect in its real layout: six
  class folders of 100x100 grayscale PNGs (10 each: 60 images)."""
  from PIL import Image

  from cpac_jax.data import MAGNETIC_TILE_CLASSES

  root = tmp_path / "data"
  for label, name in enumerate(MAGNETIC_TILE_CLASSES):
    folder = root / "magnetic_tile" / name
    folder.mkdir(parents=True)
    images = learnable_images(np.full(10, label), 100, 1, label)[..., 0]
    for i, image in enumerate(images):
      Image.fromarray(image, mode="L").save(folder / f"{label * 10 + i}.png")
  return root
