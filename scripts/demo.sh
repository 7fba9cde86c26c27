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
./scripts/fetch-inception.sh
cargo build --locked
seqgan="$CARGO_TARGET_DIR/debug/seqgan"

# Runs a training stage into folder $2 with command $1 and arguments $3...; a folder that already
# holds a run is resumed, or skipped when it reached its train.steps.
train_stage() {
  local cmd=$1 dir=$2
  shift 2
  if [ -f "$dir/latest.json" ]; then
    local step steps
    step=$(python3 -c "import json;print(json.load(open('$dir/latest.json'))['step'])")
    steps=$(python3 -c "import json;print(json.load(open('$dir/config.json'))['train']['steps'])")
    if [ "$step" -lt "$steps" ]; then
      "$seqgan" "$cmd" --device "$device" --resume "$dir"
    else
      echo "$cmd done ($dir at step $step)"
    fi
  else
    "$seqgan" "$cmd" --device "$device" --out "$dir" "$@"
  fi
}

# Stage 1: phase-1 tokenizer.
tok=runs/demo-tokenizer
train_stage train-tokenizer "$tok" --config tiny --data builtin:shapes
echo "phase-1 grid (held-out inputs over reconstructions): $(ls "$tok"/samples/*.png | tail -1)"

# Stage 2: phase 2, frozen encoder and codebook, attention-enhanced decoder.
dec=runs/demo-decoder
train_stage finetune-decoder "$dec" --tokenizer "$tok" --config phase2-tiny
echo "phase-2 grid (inputs / phase 1 / phase 2): $(ls "$dec"/samples/*.png | tail -1)"

# Held-out reconstruction PSNR of both phases.
for run in "$tok" "$dec"; do
  "$seqgan" reconstruct --device "$device" --tokenizer "$run" --limit 64 \
    --out "runs/reconstructions/$(basename "$run")" | tail -1
done

# Evaluation of both phases on held-out images: PSNR, SSIM, LPIPS, rFID, codebook usage.
for run in "$tok" "$dec"; do
  "$seqgan" eval-tokenizer --device "$device" --tokenizer "$run" --data builtin:shapes:val \
    --limit 64 --batch 16
done
