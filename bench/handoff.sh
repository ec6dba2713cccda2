#!/usr/bin/env bash
# Handoff in a ring larger than the replication factor: real `sipmesh node` processes
# (release build) on loopback. `start_sipmesh NODES` imports NUSERS users through node 0 as
# the others finish joining, so node 0 holds partitions it does not replicate once the ring
# settles; then REGS new REGISTERs go into node 0 at RATE/s. After that, every WINDOW seconds,
# the CPU of each node (/proc/PID/stat, user + system) and the partitions node 0 has handed
# off so far (from its `handoff round` debug lines), until a whole pass finds
# nothing to move after something moved, or WINDOWS windows have passed.
#
# Usage: bench/handoff.sh
# Env:   NODES=4 NUSERS=160000 REGS=90000 RATE=3000 WINDOW=10 WINDOWS=30 BIN=target/release/sipmesh
# Stops only what it started, by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
NODES=${NODES:-4}
NUSERS=${NUSERS:-160000}
REGS=${REGS:-90000}
RATE=${RATE:-3000}
WINDOW=${WINDOW:-10}
WINDOWS=${WINDOWS:-30}
STEP_SECONDS=$((REGS / RATE))
NODE_ENV="RUST_LOG=warn,sipmesh_net::mesh=debug"
source "$ROOT/bench/lib.sh"

start_sipmesh "$NODES"
echo "nodes up; $NUSERS users imported through node 0"
res=$(run_step reg "$RATE" "$SIP0" -sf "$ROOT/bench/scenarios/reg.xml" -inf "$WORK/reg.csv" -key contact_hp 127.0.0.1:5099 -t u1)
read -r ok failed retrans p50 p99 cpu achieved <<<"$res"
echo "REGISTERs into node 0: ok $ok failed $failed retrans $retrans, p50/p99 $p50/$p99 ms, $cpu µs CPU each (all nodes), $achieved/s"
log0="$WORK/node$NODES-0.log"
moved() { grep -h 'handoff round' "$log0" 2>/dev/null | sed -n 's/.*moved=\([0-9]*\).*/\1/p' | awk '{s += $1} END {print s + 0}'; }
echo "window | ms CPU per second, per node | all nodes | handed off by node 0 so far | node 0's longest call, ms"
t0=$(date +%s)
for ((w = 1; w <= WINDOWS; w++)); do
  before=()
  for p in "${TARGET_PIDS[@]}"; do before+=("$(ticks "$p")"); done
  sleep "$WINDOW"
  per=() all=0
  for i in "${!TARGET_PIDS[@]}"; do
    ms=$((($(ticks "${TARGET_PIDS[$i]}") - before[i]) * 1000 / HZ / WINDOW))
    per+=("$ms") all=$((all + ms))
  done
  longest=$(grep -h 'handoff round' "$log0" | sed -n 's/.*took_ms=\([0-9]*\).*/\1/p' | sort -n | tail -1)
  echo "+$(($(date +%s) - t0)) s | ${per[*]} | $all | $(moved) | ${longest:-0}"
  # Done: a pass over the whole keyspace that moved nothing.
  if awk '/handoff round/ && !/moved=0 / {moved = NR} /handoff pass found nothing/ && moved && NR > moved {done = 1} END {exit !done}' "$log0"; then
    echo "handoff finished: a whole pass found nothing left to move"
    break
  fi
done
