#!/usr/bin/env bash
# The paper's ablation at small scale on Fashion-MNIST: phase 1 with alpha = 1 (semantic L_sem,
# the fashion32 default, i.e. runs/fashion from scripts/fashion-demo.sh) and alpha = 0 (classic
# L_low) at the same budget and seed, each followed by the same MaskGIT training and sampling
# (decoded by its own phase-1 decoder). Reports PSNR, rFID, codebook usage and generation FID.
# L_sem here is relu5_3 only: the registry VGG-16 weights have no classifier. With torchvision's
# vgg16-397923af.pth pass EXTRA="--set perceptual.weights=PATH --set perceptual.logits=require"
# (and run fashion-demo.sh with the same). Resumable.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
setup_pipeline
./scripts/get-fashion-mnist.sh
ref=$(fashion_reference)
for alpha in 1 0; do
  if [ "$alpha" = 1 ]; then r=runs/fashion; else r=runs/ablation-alpha0; fi
  mkdir -p "$r"
  # shellcheck disable=SC2086
  train_stage train-tokenizer "$r/tokenizer" --config fashion32 --set perceptual.alpha=$alpha \
    --set train.seed="${SEED:-0}" ${EXTRA:-}
  fashion_generate "$r" "$r/tokenizer" "$ref"
done
echo "| alpha | phase-1 run | PSNR (dB) | rFID | codebook usage | generation FID |"
echo "|---|---|---|---|---|---|"
for r in runs/fashion runs/ablation-alpha0; do
  python3 - "$r" <<'PY'
import json, re, sys
r = sys.argv[1]
c = json.load(open(f"{r}/tokenizer/config.json"))
e = json.load(open(f"{r}/eval-tokenizer.json"))
m = re.search(r"FID: ([0-9.]+)", open(f"{r}/fid-tokenizer.txt").read())
print(f"| {c['perceptual']['alpha']} | {r}/tokenizer | {e['psnr']:.2f} | {e['rfid']:.2f} "
      f"| {100 * e['codebook_usage']:.0f}% | {m.group(1) if m else '?'} |")
PY
done
