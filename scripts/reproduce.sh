#!/usr/bin/env bash
# Reproduce the committed tables under experiments/ (hours on 2 CPU cores:
# the CPAC sweeps train at batch size 1, as the paper does): each study of
# configs/studies.py, its data, its stages, then its tables. Each sweep
# skips the runs its results.csv already holds, so rerunning resumes.
# Usage: bash scripts/reproduce.sh [study ...]   (default: studies.DEFAULT)
#        python scripts/study.py list [study ...]   (the commands it runs)
set -euo pipefail
cd "$(dirname "$0")/.."
exec python scripts/study.py run "$@"
