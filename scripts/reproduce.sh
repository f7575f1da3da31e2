#!/usr/bin/env bash
# Reproduce every committed table under experiments/ (hours on 2 CPU cores:
# the CPAC sweeps train at batch size 1, as the paper does). Each sweep skips
# the runs its results.csv already holds, so rerunning resumes.
# Usage: bash scripts/reproduce.sh [experiment ...]   (default: all below)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch_data.sh mnist fashion_mnist magnetic_tile
[ $# -gt 0 ] || set -- cpac_mnist cpac_mnist_1layer cpac_magnetic_tile \
  cpac_magnetic_tile_1layer ttl_mnist ttl_fashion_mnist ttl_gap_mnist \
  ttl_gap_fashion_mnist shootout_ttl_mnist shootout_cpac_mnist \
  shootout_cnn_fashion_mnist compress_fashion_mnist
for name in "$@"; do
  case "$name" in
    cpac_*) bash scripts/cpac_seeds.sh "$name" ;;  # --vectorize, a seed at a time
    ttl_gap_*)  # learning rates chosen on held-out data first, then tested
      python -m cpac_jax.sweep --config="configs/$name.py:select" \
        --workdir="experiments/$name/select"
      python -m cpac_jax.sweep --config="configs/$name.py" \
        --workdir="experiments/$name"
      python scripts/ttl_gap_table.py "${name#ttl_gap_}" ;;
    compress_*)  # fine-tuning rates chosen on held-out data first
      python -m cpac_jax.sweep --config="configs/$name.py:select" \
        --workdir="experiments/$name/selection"
      python -m cpac_jax.sweep --config="configs/$name.py" \
        --workdir="experiments/$name"
      python scripts/compress_table.py "experiments/$name" ;;
    shootout_*)  # the CPAC net's batch-1 runs train a seed at a time, together
      python -m cpac_jax.sweep --config="configs/$name.py" \
        --workdir="experiments/$name" \
        $([ "$name" = shootout_cpac_mnist ] && echo --vectorize)
      python scripts/shootout_table.py "experiments/$name" ;;
    *) python -m cpac_jax.sweep --config="configs/$name.py" \
         --workdir="experiments/$name" ;;
  esac
done
