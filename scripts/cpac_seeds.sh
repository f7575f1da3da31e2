#!/usr/bin/env bash
# The CPAC MNIST tables' seed sweeps (model.init "official", 10 seeds, and
# the default init, 3 seeds), trained --vectorize: each seed's runs as one
# program, its rows landing as it ends; rerun to go on after a stop.
#   bash scripts/cpac_seeds.sh [cpac_mnist|cpac_mnist_1layer]
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:-cpac_mnist}
python -m cpac_jax.sweep --config="configs/$name.py" \
  --workdir="experiments/$name" --vectorize
