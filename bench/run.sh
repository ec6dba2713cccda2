#!/usr/bin/env bash
# Side-by-side SIP benchmark, in one run: sipmesh (one node; a 3-node mesh with caller and
# callee on different nodes) against Kamailio (Debian's package, bench/kamailio.cfg), driven by
# SIPp with the scenarios in bench/scenarios. For each target the offered rate is stepped up
# (STEP_SECONDS per step) until a step fails; per step it records the achieved rate, failed
# calls, retransmissions, call-setup p50/p99 (SIPp response times, 1 ms resolution), and the
# proxy's CPU per call or registration from /proc/PID/stat. Results go to bench/results.md.
#
# Usage: bench/run.sh            (installs sip-tester and kamailio if missing)
# Env:   CALL_RATES="200 500 1000 2000"  REG_RATES="500 1000 2000 4000"  STEP_SECONDS=10
#        TARGETS="sipmesh1 sipmesh3 kamailio"  HOLD_MS=1000
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CALL_RATES=${CALL_RATES:-"200 500 1000 1500 2000 3000"}
REG_RATES=${REG_RATES:-"500 1000 2000 4000 8000"}
STEP_SECONDS=${STEP_SECONDS:-10}
HOLD_MS=${HOLD_MS:-1000}
OUT=${OUT:-$ROOT/bench/results.md}

source "$ROOT/bench/lib.sh"

RESULTS=()
record() { RESULTS+=("$1"); echo "$1"; }

bench_target() { # $1 = label
  local label=$1 rate res ok failed retrans p50 p99 cpu achieved
  # Registrations with digest auth.
  local offset=0
  for rate in $REG_RATES; do
    local n=$((rate * STEP_SECONDS))
    ((offset + n > NUSERS)) && break
    res=$(run_step reg "$rate" "$SIP0" -sf "$ROOT/bench/scenarios/reg.xml" -inf "$WORK/reg.csv" -key contact_hp 127.0.0.1:5099 -t u1)
    read -r ok failed retrans p50 p99 cpu achieved <<<"$res"
    record "| $label | REGISTER | $rate | $achieved | $ok | $failed | $retrans | $p50 / $p99 | $cpu |"
        if [[ $failed != 0 || $ok -lt $((n * 99 / 100)) ]]; then
      sleep 35 # let the overloaded step's retransmissions die out
      break
    fi
  done
  # Calls: a SIPp UAS registered as "callee" at the last node; the caller at the first.
  (cd "$WORK" && sipp -sf "$ROOT/bench/scenarios/uas.xml" -i 127.0.0.1 -p 5099 -t u1 -nostdin >/dev/null 2>&1) &
  local uas=$!
  PIDS+=($uas)
  sleep 1
  (cd "$WORK" && sipp -sf "$ROOT/bench/scenarios/reg.xml" -inf "$WORK/callee.csv" -m 1 -i 127.0.0.1 -key contact_hp 127.0.0.1:5099 -nostdin "$SIPN" >/dev/null 2>&1) || echo "callee registration failed" >&2
  for rate in $CALL_RATES; do
    res=$(run_step call "$rate" "$SIP0" -sf "$ROOT/bench/scenarios/uac.xml" -inf "$WORK/callees.csv" -s caller -au caller -ap secret -d "$HOLD_MS" -t u1)
    read -r ok failed retrans p50 p99 cpu achieved <<<"$res"
    record "| $label | call | $rate | $achieved | $ok | $failed | $retrans | $p50 / $p99 | $cpu |"
    sleep 5 # drain
    [[ $failed != 0 || $ok -lt $((rate * STEP_SECONDS * 99 / 100)) ]] && break
  done
  kill "$uas" 2>/dev/null || true
  wait "$uas" 2>/dev/null || true
}

TARGETS=${TARGETS:-"sipmesh1 sipmesh3 kamailio"}
for target in $TARGETS; do
  case $target in
    sipmesh1)
      echo "== sipmesh, 1 node"
      start_sipmesh 1
      bench_target "sipmesh 1 node"
      ;;
    sipmesh3)
      echo "== sipmesh, 3-node mesh (caller at node 0, callee at node 2, RF=3, QUORUM)"
      start_sipmesh 3
      bench_target "sipmesh 3 nodes"
      ;;
    kamailio)
      echo "== Kamailio $(kamailio -v | head -1 | awk '{print $3}')"
      start_kamailio
      bench_target "Kamailio"
      ;;
  esac
  stop_target
done

{
  echo "# Benchmark run $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "Command: \`bench/run.sh\` (CALL_RATES=\"$CALL_RATES\" REG_RATES=\"$REG_RATES\" STEP_SECONDS=$STEP_SECONDS HOLD_MS=$HOLD_MS)"
  echo
  echo "| target | kind | offered/s | achieved/s | ok | failed | retrans | p50 / p99 ms | CPU µs per op |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  printf '%s\n' "${RESULTS[@]}"
} >"$OUT"
echo "results in $OUT"
