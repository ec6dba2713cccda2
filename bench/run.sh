#!/usr/bin/env bash
# Side-by-side SIP benchmark, in one run, driven by SIPp (UDP, loopback) with the scenarios in
# bench/scenarios:
#   kamailio     Kamailio (Debian's package, bench/kamailio.cfg, 4 workers, usrloc in memory)
#   sipmesh1     sipmesh, one node
#   sipmesh3     sipmesh, 3 nodes (RF=3, QUORUM): REGISTERs and calls enter node 0, the callee's
#                UAS is registered at node 2, so every call crosses the mesh
#   sipmesh3all  sipmesh, 3 nodes: calls enter every node (a third of the rate each), each
#                calling a UAS registered at the next node
# For each target the offered rate is stepped up (STEP_SECONDS per step) until a step fails:
# REGISTERs with digest auth (fresh bindings), then a refresh step (the same users again), then
# calls (INVITE…BYE, HOLD_MS hold). A step passes with no failed call, >= 99 % completed and
# <= 0.1 % retransmissions (as in ../shared/bench-reference). Per step: achieved rate, failures,
# retransmissions, setup p50/p99 (SIPp RTD, 1 ms resolution, 4 ms ticks), CPU µs per operation
# summed over every target process (/proc/PID/stat), and after the REGISTER steps the target's
# resident memory per registration, and call-setup latency at LATENCY_RATE calls/s measured
# from SIPp's message trace (µs resolution). Results go to bench/results.md.
#
# Usage: bench/run.sh            (installs sip-tester and kamailio if missing; builds release)
# Env:   TARGETS="kamailio sipmesh1 sipmesh3 sipmesh3all"  CALL_RATES="500 1000 2000 3000 4000"
#        REG_RATES="1000 2000 4000 8000"  REFRESH_RATE=2000  STEP_SECONDS=10  HOLD_MS=1000
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CALL_RATES=${CALL_RATES:-"500 1000 2000 3000 4000"}
REG_RATES=${REG_RATES:-"1000 2000 4000 8000"}
REFRESH_RATE=${REFRESH_RATE:-2000}
LATENCY_RATE=${LATENCY_RATE:-200}
STEP_SECONDS=${STEP_SECONDS:-10}
HOLD_MS=${HOLD_MS:-1000}
OUT=${OUT:-$ROOT/bench/results.md}
NUSERS=${NUSERS:-160000}

source "$ROOT/bench/lib.sh"

RESULTS=()
MEMORY=()
LATENCY=()
record() { RESULTS+=("$1"); echo "$1"; }

# pass OK FAILED RETRANS EXPECTED: whether a step passed
passed() { [[ $2 == 0 && $1 -ge $(($4 * 99 / 100)) && $3 -le $(($1 / 1000)) ]]; }

# Register the UAS (on port $2) as user $1 at server $3.
register_uas() {
  (cd "$WORK" && sipp -sf "$ROOT/bench/scenarios/reg.xml" -inf "$WORK/$1.csv" -m 1 -i 127.0.0.1 \
    -key contact_hp "127.0.0.1:$2" -nostdin "$3" >/dev/null 2>&1) || echo "registering $1 failed" >&2
}

start_uas() { # $1 = port
  (cd "$WORK" && exec sipp -sf "$ROOT/bench/scenarios/uas.xml" -buff_size 4194304 -i 127.0.0.1 -p "$1" -t u1 -nostdin >/dev/null 2>&1) &
  PIDS+=($!)
  UAS_PIDS+=($!)
}

stop_uas() {
  for p in "${UAS_PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  UAS_PIDS=()
}

bench_registrations() { # $1 = label
  local label=$1 rate ok failed retrans p50 p99 cpu achieved offset=0 n
  local rss0 rss1 rss2
  rss0=$(rss_kib)
  for rate in $REG_RATES; do
    n=$((rate * STEP_SECONDS))
    ((offset + n > NUSERS)) && break
    res=$(run_step reg "$rate" "$SIP0" -sf "$ROOT/bench/scenarios/reg.xml" -inf "$(reg_csv "$offset" "$n")" -key contact_hp 127.0.0.1:5099 -t u1)
    read -r ok failed retrans p50 p99 cpu achieved <<<"$res"
    offset=$((offset + n))
    record "| $label | REGISTER | $rate | $achieved | $ok | $failed | $retrans | $p50 / $p99 | $cpu |"
    if ! passed "$ok" "$failed" "$retrans" "$n"; then
      sleep 35 # let the overloaded step's retransmissions die out
      break
    fi
  done
  sleep 3
  rss1=$(rss_kib)
  # Timer J (32 s) ends the last lingering transactions; the node gives back what the burst
  # left within 10 s more: what remains is what the registrations hold.
  sleep 42
  rss2=$(rss_kib)
  local per=$((offset > 0 ? offset : 1))
  MEMORY+=("| $label | $offset | $(((rss1 - rss0) * 1024 / per)) | $(((rss2 - rss0) * 1024 / per)) |")
  # Refresh: the first users register again (the same contacts); the leases cover them.
  n=$((REFRESH_RATE * STEP_SECONDS))
  res=$(run_step refresh "$REFRESH_RATE" "$SIP0" -sf "$ROOT/bench/scenarios/reg.xml" -inf "$(reg_csv 0 "$n")" -key contact_hp 127.0.0.1:5099 -t u1)
  read -r ok failed retrans p50 p99 cpu achieved <<<"$res"
  record "| $label | REGISTER refresh | $REFRESH_RATE | $achieved | $ok | $failed | $retrans | $p50 / $p99 | $cpu |"
}

bench_calls() { # $1 = label; calls enter SIP0, callee registered at SIPN
  local label=$1 rate ok failed retrans p50 p99 cpu achieved
  start_uas 5099
  sleep 1
  register_uas callee 5099 "$SIPN"
  read -r lp50 lp99 < <(latency_step "$LATENCY_RATE" "$SIP0")
  LATENCY+=("| $label | $LATENCY_RATE | $lp50 | $lp99 |")
  echo "setup latency at $LATENCY_RATE calls/s: p50 $lp50 ms, p99 $lp99 ms"
  sleep 3
  for rate in $CALL_RATES; do
    res=$(run_step call "$rate" "$SIP0" -sf "$ROOT/bench/scenarios/uac.xml" -inf "$WORK/callees.csv" -s caller -au caller -ap secret -d "$HOLD_MS" -t u1)
    read -r ok failed retrans p50 p99 cpu achieved <<<"$res"
    record "| $label | call | $rate | $achieved | $ok | $failed | $retrans | $p50 / $p99 | $cpu |"
    sleep 5 # drain
    passed "$ok" "$failed" "$retrans" $((rate * STEP_SECONDS)) || break
  done
  stop_uas
}

bench_calls_everywhere() { # $1 = label; 3 nodes, calls enter every node
  local label=$1 rate ok failed retrans p50 p99 cpu achieved i d
  for i in 0 1 2; do
    start_uas $((5091 + i))
  done
  sleep 1
  for i in 0 1 2; do
    register_uas "callee$i" $((5091 + i)) "127.0.0.1:$((5200 + 10 * i))"
  done
  for rate in $CALL_RATES; do
    d="$WORK/step-all-$rate-$RANDOM"
    step_begin
    for i in 0 1 2; do
      sipp_start "$d/uac$i" "127.0.0.1:$((5200 + 10 * i))" $((rate / 3)) $((rate / 3 * STEP_SECONDS)) \
        -sf "$ROOT/bench/scenarios/uac.xml" -inf "$WORK/callees$(((i + 1) % 3)).csv" -s caller -au caller -ap secret -d "$HOLD_MS" -t u1
    done
    step_result "$d" >"$d.result" # not in a subshell: it waits for this shell's SIPp processes
    read -r ok failed retrans p50 p99 cpu achieved <"$d.result"
    record "| $label | call | $rate | $achieved | $ok | $failed | $retrans | $p50 / $p99 | $cpu |"
    sleep 5
    passed "$ok" "$failed" "$retrans" $((rate / 3 * 3 * STEP_SECONDS)) || break
  done
  stop_uas
}

TARGETS=${TARGETS:-"kamailio sipmesh1 sipmesh3 sipmesh3all"}
for target in $TARGETS; do
  case $target in
    kamailio)
      echo "== Kamailio $(kamailio -v | head -1 | awk '{print $3}')"
      start_kamailio
      bench_registrations "Kamailio"
      bench_calls "Kamailio"
      ;;
    sipmesh1)
      echo "== sipmesh, 1 node"
      start_sipmesh 1
      bench_registrations "sipmesh 1 node"
      bench_calls "sipmesh 1 node"
      ;;
    sipmesh3)
      echo "== sipmesh, 3-node mesh (calls enter node 0, callee at node 2, RF=3, QUORUM)"
      start_sipmesh 3
      bench_registrations "sipmesh 3 nodes"
      bench_calls "sipmesh 3 nodes"
      ;;
    sipmesh3all)
      echo "== sipmesh, 3-node mesh, calls entering every node"
      start_sipmesh 3
      bench_calls_everywhere "sipmesh 3 nodes, load on all"
      ;;
  esac
  stop_target
  sleep 2
done

{
  echo "# Benchmark run $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "Command: \`bench/run.sh\` (TARGETS=\"$TARGETS\" CALL_RATES=\"$CALL_RATES\" REG_RATES=\"$REG_RATES\" REFRESH_RATE=$REFRESH_RATE STEP_SECONDS=$STEP_SECONDS HOLD_MS=$HOLD_MS)"
  echo
  echo "| target | kind | offered/s | achieved/s | ok | failed | retrans | p50 / p99 ms | CPU µs per op |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  printf '%s\n' "${RESULTS[@]}"
  echo
  echo "| target | registrations held | RSS growth per registration, 3 s after (bytes, all processes) | 45 s after |"
  echo "| --- | --- | --- | --- |"
  printf '%s\n' "${MEMORY[@]}"
  echo
  echo "Call setup (INVITE sent -> 200 received, from SIPp's message trace, µs resolution):"
  echo
  echo "| target | calls/s | p50 ms | p99 ms |"
  echo "| --- | --- | --- | --- |"
  printf '%s\n' "${LATENCY[@]}"
} >"$OUT"
echo "results in $OUT"
