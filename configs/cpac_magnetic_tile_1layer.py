"""CPAC-CNN, one CP conv layer, on the CPAC-Conv paper's Magnetic-Tile-
Defect images (6 classes, 100x100 grayscale, as the official repository
ships them; `bash scripts/fetch_data.sh magnetic_tile`): CP ranks 1..5 and
the dense net, the official init, 10 seeds, each its own random 85/15
split; the official numbers beside ours. Setup as `cpac_mnist.py`, 30
epochs.

  python -m cpac_jax.sweep --config=configs/cpac_magnetic_tile_1layer.py \
      --workdir=experiments/cpac_magnetic_tile_1layer --vectorize
"""

from configs import cpac_mnist


def get_config(preset: str = ""):
  return cpac_mnist.build(preset, num_layers=1, dataset="magnetic_tile")
