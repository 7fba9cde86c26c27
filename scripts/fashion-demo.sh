#!/usr/bin/env bash
# Fashion-MNIST end to end on this machine's CPU (DEVICE=wgpu for a GPU): import, phase 1,
# phase 2, tokens, MaskGIT, 50 samples of every class, tokenizer evaluation (500 test images) and
# the FID of the 500 samples against 1000 test images. Every stage is skipped when done and
# resumed when interrupted, and prints its wall time. Results land in runs/fashion/.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
setup_pipeline
./scripts/get-fashion-mnist.sh
r=runs/fashion
mkdir -p "$r"
ref=$(fashion_reference)
train_stage train-tokenizer "$r/tokenizer" --config fashion32 --set train.seed="${SEED:-0}"
train_stage finetune-decoder "$r/decoder" --tokenizer "$r/tokenizer" --config phase2-tiny \
  --set train.steps=300
fashion_generate "$r" "$r/decoder" "$ref"
t0=$SECONDS
[ -f "$r/eval-decoder.json" ] || "$seqgan" eval-tokenizer --device "$device" \
  --tokenizer "$r/decoder" --data data/fashion-mnist/test --limit 500 --out "$r/eval-decoder.json"
echo "stage eval-tokenizer -> $r/eval-decoder.json: $((SECONDS - t0)) s wall"
for run in tokenizer decoder maskgit; do "$seqgan" plot "$r/$run"; done
echo "grid: $r/samples-decoder/grid.png; curves: $r/*/curves.png"
