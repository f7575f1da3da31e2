#!/usr/bin/env bash
# The CPAC MNIST tables' seed sweeps (model.init "official", 10 seeds, and
# the default init, 3 seeds), trained --vectorize in 10 shards one after
# another, so each shard's rows land as it finishes and a stop loses at
# most one shard; rerun to go on. Then the merged table.
#   bash scripts/cpac_seeds.sh [cpac_mnist|cpac_mnist_1layer]
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:-cpac_mnist}
for i in $(seq 0 9); do
  python -m cpac_jax.sweep --config="configs/$name.py" \
    --workdir="experiments/$name" --vectorize --shard="$i/10"
done
python -m cpac_jax.report --config="configs/$name.py" \
  --workdir="experiments/$name"
