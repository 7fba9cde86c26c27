#!/usr/bin/env bash
# Phase 2's low-level perceptual loss, LPIPS form vs the paper's per-layer feature MSE, at small
# scale: the demo's phase-1 tokenizer (builtin:shapes, tiny, 300 steps; trained here if missing),
# then the same phase-2 finetune (phase2-tiny, 200 steps, same seed) with
#   lpips    perceptual.lpips_low = true,  loss.perceptual = 1   (our default)
#   mse      perceptual.lpips_low = false, loss.perceptual = 1   (the paper's L_low as written)
#   mse-0.01 perceptual.lpips_low = false, loss.perceptual = 0.01 (MSE scaled to LPIPS's size)
# and each evaluated on 256 held-out images (PSNR, SSIM, LPIPS, rFID). Prints a Markdown table.
# Resumable: finished runs and evaluations are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
setup_pipeline
tok=runs/demo-tokenizer
train_stage train-tokenizer "$tok" --config tiny --data builtin:shapes
for form in lpips mse mse-0.01; do
  case $form in
    lpips) sets=(--set perceptual.lpips_low=true --set loss.perceptual=1) ;;
    mse) sets=(--set perceptual.lpips_low=false --set loss.perceptual=1) ;;
    mse-0.01) sets=(--set perceptual.lpips_low=false --set loss.perceptual=0.01) ;;
  esac
  train_stage finetune-decoder "runs/llow-$form" --tokenizer "$tok" --config phase2-tiny "${sets[@]}"
  [ -f "runs/llow-$form/eval.json" ] || "$seqgan" eval-tokenizer --device "$device" \
    --tokenizer "runs/llow-$form" --data builtin:shapes:val --limit 256 --batch 32 \
    --out "runs/llow-$form/eval.json"
done
[ -f "$tok/eval-256.json" ] || "$seqgan" eval-tokenizer --device "$device" --tokenizer "$tok" \
  --data builtin:shapes:val --limit 256 --batch 32 --out "$tok/eval-256.json"
echo "| phase 2 L_low | weight | L_low at the last log step | PSNR (dB) | SSIM | LPIPS | rFID |"
echo "|---|---|---|---|---|---|---|"
for r in "$tok" runs/llow-lpips runs/llow-mse runs/llow-mse-0.01; do
  python3 - "$r" "$tok" <<'PY'
import json, sys
r, tok = sys.argv[1], sys.argv[2]
e = json.load(open(f"{r}/eval-256.json" if r == tok else f"{r}/eval.json"))
if r == tok:
    name, weight, low = "(phase 1, no finetune)", "", ""
else:
    c = json.load(open(f"{r}/config.json"))
    name = "LPIPS" if c["perceptual"]["lpips_low"] else "feature MSE (paper)"
    weight = c["loss"]["perceptual"]
    last = [json.loads(l) for l in open(f"{r}/metrics.jsonl")][-1]
    low = f"{last['l_low']:.3f}"
print(f"| {name} | {weight} | {low} | {e['psnr']:.2f} | {e['ssim']:.4f} | {e['lpips']:.4f} | {e['rfid']:.2f} |")
PY
done
