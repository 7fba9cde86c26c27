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
