#!/usr/bin/env bash
# Soak: does the cost of a call drift as data grows? First a fresh window of FRESH_CALLS calls
# (default 20,000) with nothing registered but the callee; then registers REGS users (default 100,000),
# then runs WINDOWS windows of WINDOW_CALLS calls each (default 10 x 100,000 = 1,000,000) at
# RATE calls/s through NODES nodes (calls enter node 0, the callee is at the last node), and
# reports per window the CPU µs per call summed over every node, setup p50/p99 and resident
# memory; then the drift (last window / fresh window, and last / first loaded window) and the
# memory per registration.
# Every load loop is bounded in count and time. Not part of the test suite.
#
# Usage: bench/soak.sh        Env: NODES=3 REGS=100000 REG_RATE=4000 RATE=2000
#                                  WINDOWS=10 WINDOW_CALLS=100000 FRESH_CALLS=20000
#                                  OUT=bench/soak.md
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
NODES=${NODES:-3}
REGS=${REGS:-100000}
REG_RATE=${REG_RATE:-4000}
RATE=${RATE:-2000}
WINDOWS=${WINDOWS:-10}
WINDOW_CALLS=${WINDOW_CALLS:-100000}
FRESH_CALLS=${FRESH_CALLS:-20000}
OUT=${OUT:-$ROOT/bench/soak.md}
NUSERS=$REGS
STEP_SECONDS=$((REGS / REG_RATE))
source "$ROOT/bench/lib.sh"

start_sipmesh "$NODES"
sleep 5
# The callee's UAS, registered at the last node; calls enter node 0.
(cd "$WORK" && exec sipp -sf "$ROOT/bench/scenarios/uas.xml" -buff_size 4194304 -i 127.0.0.1 -p 5099 -t u1 -nostdin >/dev/null 2>&1) &
PIDS+=($!)
sleep 1
register_callee() {
  (cd "$WORK" && sipp -sf "$ROOT/bench/scenarios/reg.xml" -inf "$WORK/callee.csv" -m 1 -i 127.0.0.1 -key contact_hp 127.0.0.1:5099 -nostdin "$SIPN" >/dev/null 2>&1)
}
register_callee
STEP_SECONDS=$((FRESH_CALLS / RATE))
res=$(run_step call "$RATE" "$SIP0" -sf "$ROOT/bench/scenarios/uac.xml" -inf "$WORK/callees.csv" -s caller -au caller -ap secret -d 1000 -t u1)
read -r ok failed retrans p50 p99 fresh achieved <<<"$res"
FRESH_ROW="| fresh | $ok | $ok | $failed | $retrans | $p50 / $p99 | $fresh | $(rss_kib) |"
echo "$FRESH_ROW"
# Let the fresh window's transactions end (Timer J/K, 32 s) before the memory baseline.
sleep 35
STEP_SECONDS=$((REGS / REG_RATE))
node0_kib() { awk '/^VmRSS/ {print $2}' "/proc/${TARGET_PIDS[0]}/status"; }
rss0=$(rss_kib)
own0=$(node0_kib)
echo "registering $REGS users at $REG_RATE/s"
res=$(run_step reg "$REG_RATE" "$SIP0" -sf "$ROOT/bench/scenarios/reg.xml" -inf "$WORK/reg.csv" -key contact_hp 127.0.0.1:5099 -t u1)
read -r ok failed retrans p50 p99 cpu achieved <<<"$res"
echo "registered $ok (failed $failed, retrans $retrans), $cpu µs CPU per REGISTER"
# Completed transactions live 32 s (Timer J): measure after they are gone.
sleep 40
rss1=$(rss_kib)
own1=$(node0_kib)
per_reg=$(((rss1 - rss0) * 1024 / (ok > 0 ? ok : 1)))
per_owned=$(((own1 - own0) * 1024 / (ok > 0 ? ok : 1)))
echo "resident memory: $rss0 KiB -> $rss1 KiB, $per_reg bytes per registration (all nodes); the owner node: $own0 -> $own1 KiB, $per_owned bytes per registration"

register_callee
STEP_SECONDS=$((WINDOW_CALLS / RATE))
ROWS=()
first=""
last=""
total=0
for w in $(seq "$WINDOWS"); do
  res=$(run_step call "$RATE" "$SIP0" -sf "$ROOT/bench/scenarios/uac.xml" -inf "$WORK/callees.csv" -s caller -au caller -ap secret -d 1000 -t u1)
  read -r ok failed retrans p50 p99 cpu achieved <<<"$res"
  total=$((total + ok))
  [[ -z $first ]] && first=$cpu
  last=$cpu
  row="| $w | $total | $ok | $failed | $retrans | $p50 / $p99 | $cpu | $(rss_kib) |"
  ROWS+=("$row")
  echo "$row"
  sleep 3
done
drift=$(python3 -c "print(f'{$last / max($first, 1):.2f}')")
drift_fresh=$(python3 -c "print(f'{$last / max($fresh, 1):.2f}')")
{
  echo "# Soak run $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "Command: \`bench/soak.sh\` (NODES=$NODES REGS=$REGS REG_RATE=$REG_RATE RATE=$RATE WINDOWS=$WINDOWS WINDOW_CALLS=$WINDOW_CALLS)"
  echo
  echo "Registrations: $REGS. Resident memory of the node that owns them (node 0): $own0 KiB -> $own1 KiB, $per_owned bytes per registration; over all nodes $rss0 KiB -> $rss1 KiB, $per_reg bytes per registration (each node holds a replica)."
  echo
  echo "| window | calls so far | ok | failed | retrans | setup p50 / p99 ms | CPU µs per call | RSS KiB (all nodes) |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
  echo "$FRESH_ROW"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "Drift of CPU per call: last window / fresh window $drift_fresh; last / first loaded window $drift"
} >"$OUT"
echo "drift vs fresh $drift_fresh, vs first loaded window $drift; results in $OUT"
