#!/usr/bin/env bash
# Fashion-MNIST end to end on this machine's CPU (DEVICE=wgpu for a GPU): import, phase 1,
# phase 2, tokens, MaskGIT, samples of every class, tokenizer evaluation and the FID of the
# samples against the test split. Every stage is skipped when done and resumed when interrupted;
# each prints its wall time. Results land in runs/fashion/.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
./scripts/fetch-vgg16.sh
./scripts/fetch-inception.sh
cargo build --locked
./scripts/get-fashion-mnist.sh
r=runs/fashion
mkdir -p "$r"
SAMPLES_PER_CLASS=${SAMPLES_PER_CLASS:-100}   # 1000 samples for the FID

train_stage train-tokenizer "$r/tokenizer" --config fashion32
train_stage finetune-decoder "$r/decoder" --tokenizer "$r/tokenizer" --config phase2-tiny \
  --set train.steps=500
[ -f "$r/tokens.bin" ] || "$seqgan" encode --device "$device" --tokenizer "$r/tokenizer" \
  --data data/fashion-mnist/train --flip --out "$r/tokens.bin"
train_stage train-transformer "$r/maskgit" --tokens "$r/tokens.bin" --arch maskgit --config tiny \
  --set train.steps=2000 --set train.eval_every=250 --set train.checkpoint_every=250
[ -f "$r/samples.npz" ] || "$seqgan" sample --device "$device" --transformer "$r/maskgit" \
  --decoder "$r/decoder" --class all --num "$SAMPLES_PER_CLASS" --batch 50 --seed 0 \
  --out "$r/samples" --npz "$r/samples.npz"
for run in tokenizer decoder; do
  [ -f "$r/eval-$run.json" ] || "$seqgan" eval-tokenizer --device "$device" \
    --tokenizer "$r/$run" --data data/fashion-mnist/test --limit 1000 --out "$r/eval-$run.json"
done
[ -f "$r/test-stats.npz" ] || "$seqgan" fid-stats --device "$device" data/fashion-mnist/test-2k \
  --out "$r/test-stats.npz"
"$seqgan" fid --device "$device" "$r/samples.npz" "$r/test-stats.npz" | tee "$r/fid.txt"
for run in tokenizer decoder maskgit; do "$seqgan" plot "$r/$run"; done
echo "grid: $r/samples/grid.png; curves: $r/*/curves.png"
