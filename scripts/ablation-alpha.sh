#!/usr/bin/env bash
# The paper's ablation at small scale on Fashion-MNIST: phase 1 with alpha = 1 (semantic L_sem)
# and alpha = 0 (classic L_low) at the same budget and seed, each followed by the same MaskGIT
# training and sampling. Reports rFID, codebook usage and generation FID for both. Resumable.
# Note: L_sem here is relu5_3 only (the registry VGG-16 weights have no classifier); with
# torchvision's vgg16-397923af.pth pass EXTRA="--set perceptual.weights=... --set perceptual.logits=require".
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
./scripts/fetch-vgg16.sh
./scripts/fetch-inception.sh
cargo build --locked
./scripts/get-fashion-mnist.sh
SEED=${SEED:-0}
r=runs/ablation
mkdir -p "$r"
[ -f "$r/test-stats.npz" ] || "$seqgan" fid-stats --device "$device" data/fashion-mnist/test-2k \
  --out "$r/test-stats.npz"
for alpha in 1 0; do
  d=$r/alpha$alpha
  # shellcheck disable=SC2086
  train_stage train-tokenizer "$d/tokenizer" --config fashion32 --set perceptual.alpha=$alpha \
    --set train.seed="$SEED" ${EXTRA:-}
  [ -f "$d/tokens.bin" ] || "$seqgan" encode --device "$device" --tokenizer "$d/tokenizer" \
    --data data/fashion-mnist/train --flip --out "$d/tokens.bin"
  train_stage train-transformer "$d/maskgit" --tokens "$d/tokens.bin" --arch maskgit --config tiny \
    --set train.steps=2000 --set train.seed="$SEED"
  [ -f "$d/samples.npz" ] || "$seqgan" sample --device "$device" --transformer "$d/maskgit" \
    --decoder "$d/tokenizer" --class all --num 100 --batch 50 --seed "$SEED" \
    --out "$d/samples" --npz "$d/samples.npz"
  [ -f "$d/eval.json" ] || "$seqgan" eval-tokenizer --device "$device" --tokenizer "$d/tokenizer" \
    --data data/fashion-mnist/test --limit 1000 --out "$d/eval.json"
  "$seqgan" fid --device "$device" "$d/samples.npz" "$r/test-stats.npz" | tee "$d/fid.txt"
done
echo "| alpha | PSNR | rFID | codebook usage | gen FID (1000 samples vs 2000 test) |"
echo "|---|---|---|---|---|"
for alpha in 1 0; do
  d=$r/alpha$alpha
  python3 - "$d" "$alpha" <<'PY'
import json, re, sys
d, alpha = sys.argv[1], sys.argv[2]
e = json.load(open(f"{d}/eval.json"))
fid = re.search(r"FID\s*[:=]?\s*([0-9.]+)", open(f"{d}/fid.txt").read())
get = lambda k: e.get(k, e.get("metrics", {}).get(k))
print(f"| {alpha} | {get('psnr')} | {get('rfid')} | {get('codebook_usage')} | {fid.group(1) if fid else '?'} |")
PY
done
