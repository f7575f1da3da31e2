#!/usr/bin/env bash
# The quick start: fetch MNIST, run a quick CPAC-CNN rank sweep (ranks 1, 2,
# 4, 12 and dense, one seed, 2 epochs: a few minutes on 2 CPU cores), and
# say where its table is. The full sweeps: scripts/reproduce.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch_data.sh mnist
python -m cpac_jax.sweep --config=configs/cpac_mnist.py:quick \
  --workdir=runs/cpac_mnist_quick
echo "Table: runs/cpac_mnist_quick/results.md; plots beside it."
echo "The full sweep (ranks 1..12 + dense, 3 seeds, batch size 1, as the paper):"
echo "  python -m cpac_jax.sweep --config=configs/cpac_mnist.py --workdir=experiments/cpac_mnist"
