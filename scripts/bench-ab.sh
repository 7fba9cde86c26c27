#!/usr/bin/env bash
# Two seqgan binaries against each other (for example the release builds of two commits), stage
# by stage at the arguments of scripts/bench-vs-pytorch.sh, alternating, ROUNDS rounds (default
# 2): prints each side's throughputs and the ratio of the means. CPU device. Not run by CI.
#
#   scripts/bench-ab.sh before/seqgan after/seqgan
#   STAGES="tok-tiny mg-tiny" ROUNDS=3 scripts/bench-ab.sh before/seqgan after/seqgan
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { echo "usage: $0 BEFORE_BINARY AFTER_BINARY" >&2; exit 2; }
export BURN_DEVICE=flex
before=$1 after=$2 rounds=${ROUNDS:-2}
mapfile -t table < <(sed -n '/^table=(/,/^)/p' scripts/bench-vs-pytorch.sh | grep '^  "' | sed 's/^  "//; s/"$//')
stages=${STAGES:-$(printf '%s\n' "${table[@]}" | cut -d'|' -f1 | tr '\n' ' ')}
throughput() {
  # shellcheck disable=SC2086
  "$1" bench --device cpu $2 2>/dev/null | grep '^BENCH {' | tail -1 | grep -o '"throughput":[0-9.e+-]*' | cut -d: -f2
}
printf '| %-16s | %-28s | %-28s | %-6s |\n' stage "before (rounds)" "after (rounds)" gain
printf '|%s|%s|%s|%s|\n' ------------------ ------------------------------ ------------------------------ --------
for name in $stages; do
  args=$(printf '%s\n' "${table[@]}" | grep "^$name|" | cut -d'|' -f2)
  b=() a=()
  for _ in $(seq "$rounds"); do
    b+=("$(throughput "$before" "$args")")
    a+=("$(throughput "$after" "$args")")
  done
  gain=$(python3 -c "import sys; b, a = (list(map(float, s.split())) for s in sys.argv[1:]); print(f'{sum(a) / len(a) / (sum(b) / len(b)):.2f}')" "${b[*]}" "${a[*]}")
  printf '| %-16s | %-28s | %-28s | %-6s |\n' "$name" "$(printf '%.3g ' "${b[@]}")" "$(printf '%.3g ' "${a[@]}")" "${gain}x"
done
