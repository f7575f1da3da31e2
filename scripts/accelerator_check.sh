#!/usr/bin/env bash
# The accelerator check, on one GPU (or TPU) in under 8 minutes: the device
# and versions, the fast tests, the layer benchmark against the device's
# dense layers, and one CPAC seed swept --vectorize against the committed
# CPU time, written to experiments/benchmarks/accelerator_<device>.{md,json}
# (stages and sizes: cpac_jax/benchmarks/accelerator.py). Fetches MNIST
# first where it is missing; --dry_run checks the command on the CPU at
# tiny size, on generated data, into a temporary folder.
# Usage: bash scripts/accelerator_check.sh [--dry_run] [flags of
#        python -m cpac_jax.benchmarks.accelerator]
set -euo pipefail
cd "$(dirname "$0")/.."
case " $* " in
  *" --dry_run "*) ;;
  *) bash scripts/fetch_data.sh mnist ;;
esac
exec python -m cpac_jax.benchmarks.accelerator "$@"
