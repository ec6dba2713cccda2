#!/usr/bin/env bash
# Where the time goes: runs a fixed call load (SIPp, UDP, INVITE…BYE, 1 s hold) through sipmesh
# and records every node process with `perf record -g`, then prints the top of the report for
# each node. Calls enter node 0; the callee's UAS is registered at the last node, so with
# NODES=3 every call crosses the mesh.
#
# Usage: bench/profile.sh                (installs sip-tester and linux-perf if missing)
# Env:   NODES=3 RATE=500 SECONDS_=15 KIND=call|reg OUT=/tmp/sipmesh-profile
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
NODES=${NODES:-3}
RATE=${RATE:-500}
SECONDS_=${SECONDS_:-15}
KIND=${KIND:-call}
STEP_SECONDS=$SECONDS_
NUSERS=${NUSERS:-$((RATE * SECONDS_ + 10))}
PROFILE_OUT=${OUT:-/tmp/sipmesh-profile}
command -v perf >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null; }
source "$ROOT/bench/lib.sh"
mkdir -p "$PROFILE_OUT"

start_sipmesh "$NODES"
if [[ $KIND == call ]]; then
  (cd "$WORK" && exec sipp -sf "$ROOT/bench/scenarios/uas.xml" -buff_size 4194304 -i 127.0.0.1 -p 5099 -t u1 -nostdin >/dev/null 2>&1) &
  PIDS+=($!)
  sleep 1
  (cd "$WORK" && sipp -sf "$ROOT/bench/scenarios/reg.xml" -inf "$WORK/callee.csv" -m 1 -i 127.0.0.1 -key contact_hp 127.0.0.1:5099 -nostdin "$SIPN" >/dev/null 2>&1)
  # warm up (first-use allocations, caches), then measure
  run_step call "$RATE" "$SIP0" -sf "$ROOT/bench/scenarios/uac.xml" -inf "$WORK/callees.csv" -s caller -au caller -ap secret -d 1000 -t u1 >/dev/null
  sleep 3
fi
PERFS=()
for i in "${!TARGET_PIDS[@]}"; do
  perf record -F ${FREQ:-999} --call-graph ${CALLGRAPH:-dwarf,32768} -p "${TARGET_PIDS[$i]}" -o "$PROFILE_OUT/node$i.data" >/dev/null 2>&1 &
  PERFS+=($!)
  PIDS+=($!)
done
sleep 0.5
if [[ $KIND == call ]]; then
  res=$(run_step call "$RATE" "$SIP0" -sf "$ROOT/bench/scenarios/uac.xml" -inf "$WORK/callees.csv" -s caller -au caller -ap secret -d 1000 -t u1)
else
  res=$(run_step reg "$RATE" "$SIP0" -sf "$ROOT/bench/scenarios/reg.xml" -inf "$WORK/reg.csv" -key contact_hp 127.0.0.1:5099 -t u1)
fi
for p in "${PERFS[@]}"; do kill -INT "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
read -r ok failed retrans p50 p99 cpu achieved <<<"$res"
echo "$KIND at $RATE/s through $NODES node(s): ok $ok failed $failed retrans $retrans p50/p99 $p50/$p99 ms, CPU $cpu µs per op (all nodes)"
for i in "${!TARGET_PIDS[@]}"; do
  echo "== node $i: top of the flat profile (self time)"
  perf report -i "$PROFILE_OUT/node$i.data" --no-children --sort symbol --stdio 2>/dev/null |
    grep -E '^ +[0-9]' | head -${TOP:-25}
done
echo "perf data in $PROFILE_OUT (perf report -i $PROFILE_OUT/node0.data)"
