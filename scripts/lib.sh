# Shared by the pipeline scripts (source it): device choice, the binary, resumable stages.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/seqgan-target}"
device=${DEVICE:-cpu}
if [ "$device" = cpu ]; then export BURN_DEVICE=flex; fi
seqgan="$CARGO_TARGET_DIR/debug/seqgan"

# Prints a JSON field of a file: json_field FILE KEY [SUBKEY].
json_field() {
  python3 -c "import json,sys;d=json.load(open(sys.argv[1]))
for k in sys.argv[2:]: d=d[k]
print(d)" "$@"
}

# Runs a training stage into folder $2 with command $1 and arguments $3...; a folder that already
# holds a run is resumed, or skipped when it reached its train.steps. Prints the stage's wall time.
train_stage() {
  local cmd=$1 dir=$2 t0=$SECONDS
  shift 2
  if [ -f "$dir/latest.json" ]; then
    local step steps
    step=$(json_field "$dir/latest.json" step)
    steps=$(json_field "$dir/config.json" train steps)
    if [ "$step" -lt "$steps" ]; then
      "$seqgan" "$cmd" --device "$device" --resume "$dir"
    else
      echo "$cmd done ($dir at step $step)"
      return 0
    fi
  else
    "$seqgan" "$cmd" --device "$device" --out "$dir" "$@"
  fi
  echo "stage $cmd -> $dir: $((SECONDS - t0)) s wall"
}

# The generative half of a Fashion-MNIST pipeline in folder $1 whose phase-1 run is $1/tokenizer
# and whose decoder is $2: tokens, a tiny MaskGIT, 50 samples per class (.npz, named after the
# decoder's folder), the tokenizer's
# evaluation on 500 test images, and the samples' FID against the 1000-image test reference
# $3 (statistics .npz). Every step is skipped when its output exists.
fashion_generate() {
  local r=$1 dec=$2 ref=$3 t0 tag
  tag=$(basename "$dec")   # samples are named by the decoder that drew them
  t0=$SECONDS
  [ -f "$r/tokens.bin" ] || "$seqgan" encode --device "$device" --tokenizer "$r/tokenizer" \
    --data data/fashion-mnist/train --out "$r/tokens.bin"
  echo "stage encode -> $r/tokens.bin: $((SECONDS - t0)) s wall"
  train_stage train-transformer "$r/maskgit" --tokens "$r/tokens.bin" --arch maskgit \
    --config tiny --set train.steps=2000 --set train.eval_every=250 \
    --set train.checkpoint_every=500 --set train.seed="${SEED:-0}"
  t0=$SECONDS
  [ -f "$r/samples-$tag.npz" ] || "$seqgan" sample --device "$device" --transformer "$r/maskgit" \
    --decoder "$dec" --class all --num 50 --batch 50 --seed "${SEED:-0}" \
    --out "$r/samples-$tag" --npz "$r/samples-$tag.npz"
  echo "stage sample -> $r/samples-$tag: $((SECONDS - t0)) s wall"
  t0=$SECONDS
  [ -f "$r/eval-tokenizer.json" ] || "$seqgan" eval-tokenizer --device "$device" \
    --tokenizer "$r/tokenizer" --data data/fashion-mnist/test --limit 500 \
    --out "$r/eval-tokenizer.json"
  echo "stage eval-tokenizer -> $r/eval-tokenizer.json: $((SECONDS - t0)) s wall"
  t0=$SECONDS
  [ -f "$r/fid-$tag.txt" ] || "$seqgan" fid --device "$device" "$r/samples-$tag.npz" "$ref" \
    > "$r/fid-$tag.txt"
  cat "$r/fid-$tag.txt"
  echo "stage fid -> $r/fid-$tag.txt: $((SECONDS - t0)) s wall"
}

# The 1000-image Fashion-MNIST test reference for FID, computed once.
fashion_reference() {
  local out=runs/fashion-test-1k-stats.npz t0=$SECONDS
  [ -f "$out" ] || "$seqgan" fid-stats --device "$device" data/fashion-mnist/test-1k --out "$out" >&2
  echo "stage fid-stats -> $out: $((SECONDS - t0)) s wall" >&2
  echo "$out"
}

# Fetches the weights the pipelines need and builds the binary.
setup_pipeline() {
  ./scripts/fetch-vgg16.sh
  ./scripts/fetch-inception.sh
  cargo build --locked
}
