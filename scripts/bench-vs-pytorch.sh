#!/usr/bin/env bash
# seqgan against PyTorch on this machine, stage by stage, at the same config and batch: for
# each stage, `seqgan bench` and bench/pytorch_reference.py (a PyTorch reference of our own
# models and steps) run back to back, alternating, for ROUNDS rounds; prints both throughputs,
# their ratio, each side's parameter count and peak resident memory. Release build of seqgan,
# CPU device, float32; PyTorch eager with THREADS threads (default: the number of cores).
# PyTorch is installed from PyPI into a venv (~5 GB with its CUDA libraries, used on the CPU) on
# the first run; it is a benchmark dependency only. Not run by CI (about 10 minutes per round
# on 2 cores).
#
#   scripts/bench-vs-pytorch.sh                 every stage
#   STAGES="tok-tiny mg-tiny" scripts/bench-vs-pytorch.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/seqgan-target}"
export BURN_DEVICE=flex
rounds=${ROUNDS:-2}
threads=${THREADS:-$(nproc)}
venv=${VENV:-$HOME/.cache/seqgan-bench-venv}
if ! "$venv/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "torch==2.15.*" "torchvision==0.29.*" numpy
fi
py="$venv/bin/python"
# PyTorch uses AVX-512 where the CPU has it; so does seqgan (its default `avx512` feature picks
# the gemm crate's AVX-512 kernels at run time). FEATURES="--no-default-features" measures AVX2.
read -r -a features <<<"${FEATURES:-}"
cargo build --locked --release "${features[@]}"
seqgan="$CARGO_TARGET_DIR/release/seqgan"

# name | seqgan bench arguments | pytorch_reference.py arguments
table=(
  "tok-tiny|--stage tokenizer --config tiny --steps 10 --warmup 2|--stage tokenizer --config tiny --steps 10 --warmup 2"
  "tok-paper256|--stage tokenizer --config paper256 --set train.batch_size=1 --set train.grad_accum=1 --set train.num_workers=2 --steps 2 --warmup 1|--stage tokenizer --config paper256 --batch 1 --grad-accum 1 --steps 2 --warmup 1"
  "dec-tiny|--stage decoder --config tiny --steps 10 --warmup 2|--stage decoder --config tiny --steps 10 --warmup 2"
  "mg-tiny|--stage transformer --transformer tiny --arch maskgit --tokens 8 64 10 --batch 32 --steps 20 --warmup 3|--stage transformer --transformer tiny --arch maskgit --tokens 8 64 10 --batch 32 --steps 20 --warmup 3"
  "gpt-tiny|--stage transformer --transformer tiny --arch gpt --tokens 8 64 10 --batch 32 --steps 20 --warmup 3|--stage transformer --transformer tiny --arch gpt --tokens 8 64 10 --batch 32 --steps 20 --warmup 3"
  "mg-base|--stage transformer --transformer base --arch maskgit --batch 2 --steps 2 --warmup 1|--stage transformer --transformer base --arch maskgit --batch 2 --steps 2 --warmup 1"
  "mg-sample-base|--stage sample --transformer base --arch maskgit --batch 2 --steps 1 --warmup 1|--stage sample --transformer base --arch maskgit --batch 2 --steps 1 --warmup 1"
  "gpt-sample-tiny|--stage sample --transformer tiny --arch gpt --tokens 16 1024 1000 --batch 8 --steps 3 --warmup 1|--stage sample --transformer tiny --arch gpt --tokens 16 1024 1000 --batch 8 --steps 3 --warmup 1"
  "inception|--stage inception --batch 8 --steps 3 --warmup 1|--stage inception --batch 8 --steps 3 --warmup 1"
)
stages=${STAGES:-$(printf '%s\n' "${table[@]}" | cut -d'|' -f1 | tr '\n' ' ')}

field() { echo "$1" | grep -o "\"$2\":[0-9.e+-]*" | head -1 | cut -d: -f2; }

echo "seqgan $("$seqgan" --version | cut -d' ' -f2) (release ${features[*]}, CPU device) vs PyTorch $("$py" -c 'import torch; print(torch.__version__)') (eager, $threads threads), $(nproc) cores, $(grep -qw avx512f /proc/cpuinfo && echo AVX-512 || echo 'no AVX-512'), $(date -u +%F)"
printf '| %-16s | %-24s | %-24s | %-9s | %-12s | %-12s | %-11s | %-18s |\n' stage "seqgan (rounds)" "PyTorch (rounds)" ratio "params seqgan" "params torch" "peak seqgan" "peak torch (import)"
printf '|%s|%s|%s|%s|%s|%s|%s|%s|\n' ------------------ -------------------------- -------------------------- ----------- -------------- -------------- ------------- --------------------
for name in $stages; do
  row=$(printf '%s\n' "${table[@]}" | grep "^$name|")
  ours=$(echo "$row" | cut -d'|' -f2)
  theirs=$(echo "$row" | cut -d'|' -f3)
  s_vals=() t_vals=()
  for _ in $(seq "$rounds"); do
    # shellcheck disable=SC2086
    s_json=$("$seqgan" bench --device cpu $ours 2>/dev/null | grep '^BENCH {' | tail -1 | cut -d' ' -f2-)
    # shellcheck disable=SC2086
    t_json=$("$py" bench/pytorch_reference.py --threads "$threads" $theirs 2>/dev/null | tail -1)
    s_vals+=("$(field "$s_json" throughput)")
    t_vals+=("$(field "$t_json" throughput)")
    unit=$(echo "$s_json" | grep -o '"unit":"[a-z/]*"' | cut -d'"' -f4)
    sp=$(field "$s_json" params)
    tp=$(echo "$t_json" | grep -o '"params":[0-9]*' | cut -d: -f2)
    # Only the GAN stages report a discriminator (no match is not an error).
    dp=$(echo "$t_json" | grep -o '"disc_params":[0-9]*' | cut -d: -f2 || true)
    tp=$((tp + ${dp:-0}))  # seqgan counts the discriminator with the tokenizer
    # Peak resident memory of the last round, MiB (torch's includes its import, shown apart).
    s_peak=$(field "$s_json" peak_host_mib)
    t_peak=$(field "$t_json" peak_rss_mib)
    t_import=$(field "$t_json" import_rss_mib)
  done
  ratio=$(printf '%s\n' "${s_vals[@]}" | awk -v t="${t_vals[*]}" '{ s += $1 } END { n = split(t, a, " "); for (i = 1; i <= n; i++) u += a[i]; printf "%.2f", (s / NR) / (u / n) }')
  printf '| %-16s | %-24s | %-24s | %-9s | %-12s | %-12s | %-11s | %-18s |\n' "$name" \
    "$(printf '%.3g ' "${s_vals[@]}")$unit" "$(printf '%.3g ' "${t_vals[@]}")$unit" "$ratio" "$sp" "$tp" \
    "$(printf '%.0f MiB' "${s_peak:-0}")" "$(printf '%.0f MiB (%.0f)' "${t_peak:-0}" "${t_import:-0}")"
done
