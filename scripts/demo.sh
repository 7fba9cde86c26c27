#!/usr/bin/env bash
# The main job on the built-in default: every implemented stage in order on builtin:shapes at the
# tiny config on the CPU. Fetches the weights it needs. Re-running continues or skips finished
# stages. Pass DEVICE=wgpu to use the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
setup_pipeline

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

# Stage 3: token maps of the training images (with mirrored copies), computed once.
tokens=runs/demo-tokens.bin
if [ -f "$tokens" ]; then
  echo "encode done ($tokens)"
else
  "$seqgan" encode --device "$device" --tokenizer "$tok" --data builtin:shapes --flip --out "$tokens"
fi

# Stage 4: a class-conditional MaskGIT on the tokens.
gen=runs/demo-maskgit
train_stage train-transformer "$gen" --tokens "$tokens" --arch maskgit --config tiny

# Stage 5: 8 samples of every class, decoded by the phase-2 decoder; one grid row per class.
"$seqgan" sample --device "$device" --transformer "$gen" --decoder "$dec" --class all --num 8 \
  --seed 0 --out runs/demo-samples
echo "sample grid (one row per class): runs/demo-samples/grid.png"
