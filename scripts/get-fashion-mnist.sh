#!/usr/bin/env bash
# Fashion-MNIST (70k 28x28 grey images, 10 classes, MIT licence, Zalando Research) as ImageFolders
# data/fashion-mnist/{train,test}/NN-classname/NNNNN.png. The IDX files come from the Debian
# package dataset-fashion-mnist (installed with apt when missing, as root), or from FASHION_IDX=DIR
# holding the four IDX files of the dataset's official download
# (https://github.com/zalandoresearch/fashion-mnist#get-the-data).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
src=${FASHION_IDX:-/usr/share/datasets/fashion-mnist}
if [ ! -f "$src/train-images-idx3-ubyte.gz" ] && [ ! -f "$src/train-images-idx3-ubyte" ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "no Fashion-MNIST IDX files in $src: install the Debian package dataset-fashion-mnist," >&2
    echo "or download the four IDX files and set FASHION_IDX=DIR" >&2
    exit 1
  fi
fi
idx() { if [ -f "$src/$1.gz" ]; then echo "$src/$1.gz"; else echo "$src/$1"; fi; }
[ -x "$seqgan" ] || cargo build --locked
# train (60k), test (10k), and test-1k (the first 1000 test images: the FID reference that a
# 2-core CPU computes in minutes).
for split in train:train: t10k:test: t10k:test-1k:1000; do
  IFS=: read -r prefix name limit <<<"$split"
  out=data/fashion-mnist/$name
  if [ -d "$out" ]; then
    echo "$out exists"
  else
    "$seqgan" import-idx "$(idx "$prefix-images-idx3-ubyte")" "$(idx "$prefix-labels-idx1-ubyte")" \
      --classes fashion-mnist --out "$out.tmp" ${limit:+--limit "$limit"} && mv "$out.tmp" "$out"
  fi
done
