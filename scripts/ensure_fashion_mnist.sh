#!/usr/bin/env bash
# Makes sure the Fashion-MNIST files of the Debian package are present.
set -euo pipefail
dir="${1:-/usr/share/datasets/fashion-mnist}"
if [ -f "$dir/train-images-idx3-ubyte.gz" ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "Fashion-MNIST missing under $dir: installing the Debian package dataset-fashion-mnist"
  apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null
  exit 0
fi
echo "Fashion-MNIST not found under $dir: run 'sudo apt-get install -y dataset-fashion-mnist', or shard any image folder with 'rayssl shard PATH --out DIR' and set data.shards=DIR." >&2
exit 1
