#!/usr/bin/env bash
# The first thing to run on a GPU machine (it is what the lent H200 runs): the adapter, the
# device's float32 peak, then `seqgan bench` on every stage at the paper's configs (paper256,
# phase 2, the `base` transformer) with the paper's batch sizes where memory allows, printing
# img/s, tokens/s, device memory, GFLOP/s and its share of the peak. Needs only the binary:
# missing weight files become random weights in their layout (timing only).
#
#   scripts/gpu-check.sh [path/to/seqgan]            full run on wgpu
#   DEVICE=cuda scripts/gpu-check.sh [seqgan]         a CUDA build
#   SMOKE=1 scripts/gpu-check.sh [seqgan]             tiny configs, one step each (CI: lavapipe)
set -euo pipefail
bin=${1:-${SEQGAN:-seqgan}}
device=${DEVICE:-wgpu}
smoke=${SMOKE:-0}
log=${LOG:-gpu-check.log}
: > "$log"

run() {
  echo "+ seqgan $*" | tee -a "$log"
  "$bin" "$@" 2>&1 | tee -a "$log"
}

if [ "$smoke" = 1 ]; then
  steps=(--steps 1 --warmup 0)
  tok=(--config tiny --set train.batch_size=2)
  tr=(--transformer tiny --tokens 8 64 10)
  tr_batch=4
  sample_batch=2
  inc_batch=1
  kernels=(--res 128 --batch 1)
else
  # Warm-up steps compile the kernels; the timed steps are the steady state.
  steps=(--steps 5 --warmup 2)
  tok=(--config paper256 --set train.batch_size=32 --set train.grad_accum=1)
  tr=(--transformer base --tokens 16 1024 1000)
  tr_batch=256
  sample_batch=64
  inc_batch=50
  kernels=(--res 4096 --batch 64)
fi

peak=""
if [ "$smoke" != 1 ]; then
  run bench --device "$device" --stage peak
  peak=$(grep -o '"ops_per_s":[0-9.e+-]*' "$log" | tail -1 | cut -d: -f2 || true)
fi
# The kernels alone (GEMM, 3x3 conv forward and backward), against which the stages compare.
run bench --device "$device" --stage kernels "${kernels[@]}" "${steps[@]}"
run bench --device "$device" --stage tokenizer "${tok[@]}" "${steps[@]}"
run bench --device "$device" --stage decoder "${tok[@]}" "${steps[@]}"
# The replica path on one device: 1 and 2 replicas against the plain path above.
run bench --device "$device" --devices 0 --stage tokenizer "${tok[@]}" "${steps[@]}"
run bench --device "$device" --devices 0,0 --stage tokenizer "${tok[@]}" "${steps[@]}"
for arch in maskgit gpt; do
  run bench --device "$device" --stage transformer --arch "$arch" "${tr[@]}" --batch "$tr_batch" "${steps[@]}"
  run bench --device "$device" --stage sample --arch "$arch" "${tr[@]}" --batch "$sample_batch" "${steps[@]}"
done
run bench --device "$device" --stage inception --batch "$inc_batch" "${steps[@]}"

echo
echo "summary (GFLOP/s counted from the configs; share of the device's float32 peak when measured):"
# One field of a BENCH record; empty when absent (never fails the script).
field() { grep -o "\"$1\":\"\?[^\",}]*" <<<"$2" | head -1 | sed 's/^"[a-z_]*":"\?//' || true; }
grep '^BENCH {' "$log" | grep -v '"stage":"peak"' | while read -r _ json; do
  what=$(grep -o '"what":"[^"]*"' <<<"$json" | cut -d'"' -f4 || true)
  thr=$(field throughput "$json")
  unit=$(field unit "$json")
  gf=$(field gflop_per_s "$json")
  dev=$(field devices "$json")
  mem=$(field device_reserved_mib "$json")
  share=""
  if [ -n "$peak" ]; then
    share=$(awk -v g="$gf" -v p="$peak" 'BEGIN { printf "%.1f%% of peak", 100 * g * 1e9 / p }')
  fi
  printf '%s dev %10.2f %-9s %8.1f GFLOP/s %s pools %5.0f MiB  %s\n' \
    "${dev:-1}" "${thr:-0}" "$unit" "${gf:-0}" "$share" "${mem:-0}" "$what"
done
