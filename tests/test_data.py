"""cpac_jax.data: the real file formats, and errors that come at once."""

import time

import numpy as np
import pytest

from cpac_jax import data
from tests.conftest import learnable_images


def test_mnist_idx_files_load_as_images_and_labels(mnist_dir):
  train = data.load("mnist", "train", mnist_dir)
  test = data.load("mnist", "test", mnist_dir)
  assert train.images.shape == (512, 28, 28, 1)
  assert train.images.dtype == np.uint8 and train.labels.dtype == np.int32
  assert test.images.shape == (256, 28, 28, 1)
  labels = np.random.default_rng(0).integers(0, 10, 512)
  np.testing.assert_array_equal(train.labels, labels)
  np.testing.assert_array_equal(
      train.images[..., 0], learnable_images(labels, 28, 1, 0)[..., 0])


def test_data_dir_comes_from_the_environment(mnist_dir, monkeypatch):
  monkeypatch.setenv("CPAC_DATA_DIR", str(mnist_dir))
  assert data.load("mnist", "test").images.shape == (256, 28, 28, 1)


def test_cifar_tarball_loads_channels_last(cifar_dir):
  train = data.load("cifar10", "train", cifar_dir)
  test = data.load("cifar10", "test", cifar_dir)
  assert train.images.shape == (200, 32, 32, 3)
  assert test.images.shape == (40, 32, 32, 3)
  labels = np.random.default_rng(5).integers(0, 10, 40)
  np.testing.assert_array_equal(test.labels, labels)
  np.testing.assert_array_equal(test.images, learnable_images(labels, 32, 3, 5))


def test_missing_data_fails_at_once_naming_places_and_fetch(tmp_path):
  start = time.perf_counter()
  with pytest.raises(data.DataNotFoundError) as error:
    data.load("fashion_mnist", "train", tmp_path)
  assert time.perf_counter() - start < 2  # no network retries
  message = str(error.value)
  assert "'fashion_mnist'" in message
  assert str(tmp_path / "fashion_mnist") in message
  assert "scripts/fetch_data.sh" in message


def test_missing_cifar_says_it_cannot_be_fetched_here(tmp_path):
  with pytest.raises(data.DataNotFoundError, match="cifar-10-python.tar.gz"):
    data.load("cifar10", "test", tmp_path)


@pytest.mark.parametrize("name,split,match", [
    ("mnst", "train", "unknown dataset 'mnst'"),
    ("mnist", "validation", "unknown split 'validation'")])
def test_unknown_names_are_rejected(name, split, match, tmp_path):
  with pytest.raises(ValueError, match=match):
    data.load(name, split, tmp_path)


def test_corrupt_idx_file_is_named(mnist_dir):
  path = mnist_dir / "mnist" / "t10k-labels-idx1-ubyte.gz"
  import gzip
  with gzip.open(path, "wb") as f:
    f.write(b"not an idx file")
  with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz"):
    data.load("mnist", "test", mnist_dir)


def test_magnetic_tile_folders_load_as_each_seeds_85_15_split(
    magnetic_tile_dir):
  train = data.load("magnetic_tile", "train", magnetic_tile_dir, seed=0)
  test = data.load("magnetic_tile", "test", magnetic_tile_dir, seed=0)
  assert train.images.shape == (51, 100, 100, 1)  # int(0.85 * 60)
  assert test.images.shape == (9, 100, 100, 1)
  assert train.images.dtype == np.uint8 and train.labels.dtype == np.int32
  # every image once, each with its folder's label (labels in folder order)
  images = np.concatenate([train.images, test.images])[..., 0]
  labels = np.concatenate([train.labels, test.labels])
  for label in range(6):
    expected = learnable_images(np.full(10, label), 100, 1, label)[..., 0]
    ours = images[labels == label]
    assert len(ours) == 10
    assert sorted(map(bytes, ours)) == sorted(map(bytes, expected))
  other = data.load("magnetic_tile", "test", magnetic_tile_dir, seed=1)
  assert not np.array_equal(other.labels, test.labels)
  again = data.load("magnetic_tile", "test", magnetic_tile_dir, seed=0)
  np.testing.assert_array_equal(again.images, test.images)


def test_magnetic_tile_rejects_an_image_of_the_wrong_size(magnetic_tile_dir):
  from PIL import Image

  bad = magnetic_tile_dir / "magnetic_tile" / "MT_Free" / "odd.png"
  Image.new("L", (64, 100)).save(bad)
  with pytest.raises(ValueError, match=r"odd.png is a 64x100 'L' image"):
    data.load("magnetic_tile", "train", magnetic_tile_dir)


def test_missing_magnetic_tile_names_its_fetch_command(tmp_path):
  with pytest.raises(data.DataNotFoundError,
                     match="fetch_data.sh magnetic_tile"):
    data.load("magnetic_tile", "train", tmp_path)


@pytest.mark.parametrize("suffix", [".PNG", ".jpeg", ".Jpg"])
def test_magnetic_tile_reads_every_image_extension_imagefolder_reads(
    magnetic_tile_dir, suffix):
  from PIL import Image

  base = data.load("magnetic_tile", "train", magnetic_tile_dir)
  base_test = data.load("magnetic_tile", "test", magnetic_tile_dir)
  Image.new("L", (100, 100)).save(
      magnetic_tile_dir / "magnetic_tile" / "MT_Free" / f"extra{suffix}",
      format="PNG" if suffix.lower() == ".png" else "JPEG")
  (magnetic_tile_dir / "magnetic_tile" / "MT_Free" / "notes.txt").write_text(
      "not an image")
  train = data.load("magnetic_tile", "train", magnetic_tile_dir)
  test = data.load("magnetic_tile", "test", magnetic_tile_dir)
  assert len(train.labels) + len(test.labels) == (
      len(base.labels) + len(base_test.labels) + 1)


@pytest.mark.parametrize("damage", ["missing", "empty"])
def test_magnetic_tile_refuses_a_missing_or_empty_class(magnetic_tile_dir,
                                                        damage):
  import shutil

  folder = magnetic_tile_dir / "magnetic_tile" / "MT_Crack"
  shutil.rmtree(folder)
  if damage == "empty":
    folder.mkdir()
  with pytest.raises(ValueError, match=rf"{damage}: MT_Crack; found: "
                     r"MT_Blowhole 10, MT_Break 10, "):
    data.load("magnetic_tile", "train", magnetic_tile_dir)
