#!/usr/bin/env bash
# Reproduce every committed table under experiments/ (hours on 2 CPU cores:
# the CPAC sweeps train at batch size 1, as the paper does). Each sweep skips
# the runs its results.csv already holds, so rerunning resumes.
# Usage: bash scripts/reproduce.sh [experiment ...]   (default: all below)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch_data.sh
[ $# -gt 0 ] || set -- cpac_mnist cpac_mnist_1layer ttl_mnist ttl_fashion_mnist
for name in "$@"; do
  python -m cpac_jax.sweep --config="configs/$name.py" \
    --workdir="experiments/$name"
done
