#!/usr/bin/env bash
# The test command: fetches the VGG-16 and FID Inception weights the reference tests need (and
# self-tests the TorchScript reader of the Inception converter), then runs every test on the CPU
# device. Uses a cargo target folder outside the clone so repeated runs reuse the build.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/seqgan-target}"
export BURN_DEVICE=flex
./scripts/fetch-vgg16.sh
./scripts/fetch-inception.sh
python3 scripts/convert_fid_inception.py --self-test
cargo test --locked "$@"
