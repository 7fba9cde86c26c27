#!/usr/bin/env bash
# The main job on the built-in default: every implemented stage in order on builtin:shapes at the
# tiny config on the CPU. Fetches the weights it needs. Re-running continues or skips finished
# stages. Pass DEVICE=wgpu to use the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/seqgan-target}"
device=${DEVICE:-cpu}
[ "$device" = cpu ] && export BURN_DEVICE=flex
./scripts/fetch-vgg16.sh
cargo build --locked
seqgan="$CARGO_TARGET_DIR/debug/seqgan"

# Stage 1: phase-1 tokenizer.
tok=runs/demo-tokenizer
if [ -f "$tok/latest.json" ]; then
  step=$(python3 -c "import json;print(json.load(open('$tok/latest.json'))['step'])")
  steps=$(python3 -c "import json;print(json.load(open('$tok/config.json'))['train']['steps'])")
  if [ "$step" -lt "$steps" ]; then
    "$seqgan" train-tokenizer --device "$device" --resume "$tok"
  else
    echo "stage 1 done ($tok at step $step)"
  fi
else
  "$seqgan" train-tokenizer --device "$device" --config tiny --data builtin:shapes --out "$tok"
fi
echo "sample grid (held-out inputs over reconstructions): $(ls "$tok"/samples/*.png | tail -1)"
