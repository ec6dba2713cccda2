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

need=()
command -v sipp >/dev/null || need+=(sip-tester)
command -v kamailio >/dev/null || need+=(kamailio)
if ((${#need[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --locked -q
BIN=$ROOT/target/release/sipmesh
WORK=$(mktemp -d /tmp/sipmesh-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; pkill -f "sipp.*$WORK" 2>/dev/null || true; }
trap cleanup EXIT

ticks() { # utime+stime of the given pids, in clock ticks
  local t=0
  for p in "$@"; do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}
HZ=$(getconf CLK_TCK)

# Users: bench0000..N and the callee, all with password "secret" (Kamailio's config checks
# every user against that one password).
NUSERS=40000
python3 - "$WORK" "$NUSERS" <<'PY'
import sys
work, n = sys.argv[1], int(sys.argv[2])
with open(f"{work}/users.csv", "w") as f:
    f.write("callee,secret\ncaller,secret\n")
    for i in range(n):
        f.write(f"bench{i:05d},secret\n")
with open(f"{work}/reg.csv", "w") as f:
    f.write("SEQUENTIAL\n")
    for i in range(n):
        f.write(f"bench{i:05d};[authentication username=bench{i:05d} password=secret]\n")
with open(f"{work}/callee.csv", "w") as f:
    f.write("SEQUENTIAL\ncallee;[authentication username=callee password=secret]\n")
with open(f"{work}/callees.csv", "w") as f:
    f.write("SEQUENTIAL\ncallee\n")
PY

start_sipmesh() { # $1 = number of nodes; sets TARGET_PIDS, SIP0, SIPN (last node), HTTP0
  local n=$1 i
  TARGET_PIDS=()
  local seed=""
  for ((i = 0; i < n; i++)); do
    local dir="$WORK/node$n-$i"
    local args=(node --data-dir "$dir" --sip-listen "127.0.0.1:$((5200 + 10 * i))"
      --p2p-listen "/ip4/127.0.0.1/tcp/$((4200 + i))" --http-listen "127.0.0.1:$((8200 + i))"
      --auth-invites false)
    [[ -n $seed ]] && args+=(--bootstrap "$seed")
    RUST_LOG=warn "$BIN" "${args[@]}" >"$WORK/node$n-$i.log" 2>&1 &
    TARGET_PIDS+=($!)
    PIDS+=($!)
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$((8200 + i))/v1/status" >/dev/null && break; sleep 0.1; done
    [[ -z $seed ]] && seed=$(curl -sf http://127.0.0.1:8200/v1/status | python3 -c 'import json,sys; print(json.load(sys.stdin)["p2p"])')
  done
  for _ in $(seq 200); do
    up=$(curl -sf http://127.0.0.1:8200/v1/status | python3 -c 'import json,sys; print(json.load(sys.stdin)["members_up"])')
    [[ $up == "$n" ]] && break
    sleep 0.1
  done
  curl -sf -X POST --data-binary @"$WORK/users.csv" http://127.0.0.1:8200/v1/users/import >/dev/null
  SIP0=127.0.0.1:5200
  SIPN=127.0.0.1:$((5200 + 10 * (n - 1)))
}

stop_target() { for p in "${TARGET_PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }

start_kamailio() {
  mkdir -p "$WORK/kam"
  kamailio -f "$ROOT/bench/kamailio.cfg" -DD -E -m 1024 -M 16 -n 4 -Y "$WORK/kam" -P "$WORK/kam/kamailio.pid" -A WITH_AUTH >"$WORK/kam.log" 2>&1 &
  local main=$!
  PIDS+=($main)
  sleep 2
  # the main process and all its children (workers, timers)
  TARGET_PIDS=($main $(pgrep -P "$main" | tr '\n' ' '))
  SIP0=127.0.0.1:5070
  SIPN=127.0.0.1:5070
}

# sipp_step LABEL SCENARIO-ARGS... ; prints "achieved failed retrans p50 p99 cpu_us_per"
run_step() {
  local kind=$1 rate=$2 server=$3; shift 3
  local n=$((rate * STEP_SECONDS))
  local d="$WORK/step-$kind-$rate-$RANDOM"
  mkdir -p "$d"
  local before after t0 t1
  before=$(ticks "${TARGET_PIDS[@]}")
  t0=$(date +%s.%N)
  (cd "$d" && sipp "$@" -m "$n" -r "$rate" -l $((rate * 4)) -i 127.0.0.1 -nostdin -timeout $((STEP_SECONDS * 4 + 40))s \
    -trace_stat -fd 1 -trace_rtt -rtt_freq 1 "$server" >/dev/null 2>&1) || true
  t1=$(date +%s.%N)
  after=$(ticks "${TARGET_PIDS[@]}")
  python3 - "$d" "$n" "$before" "$after" "$HZ" "$t0" "$t1" <<'PY'
import csv, glob, sys
d, n, before, after, hz, t0, t1 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]), float(sys.argv[7])
ok = failed = retrans = 0
elapsed = t1 - t0
for f in glob.glob(f"{d}/*_.csv"):
    rows = list(csv.reader(open(f), delimiter=";"))
    if len(rows) >= 2:
        h, last = rows[0], rows[-1]
        col = lambda name: int(last[h.index(name)]) if name in h else 0
        ok, failed, retrans = col("SuccessfulCall(C)"), col("FailedCall(C)"), col("Retransmissions(C)")
        el = [x for x in h if x == "ElapsedTime(C)"]
rtts = []
for f in glob.glob(f"{d}/*_rtt.csv"):
    for r in list(csv.reader(open(f), delimiter=";"))[1:]:
        try:
            if r[2].strip() == "1":
                rtts.append(float(r[1]))
        except (IndexError, ValueError):
            pass
rtts.sort()
pct = lambda p: rtts[min(len(rtts) - 1, int(p * (len(rtts) - 1)))] if rtts else float("nan")
cpu_us = (after - before) / hz * 1e6 / max(ok, 1)
print(f"{ok} {failed} {retrans} {pct(0.5):.1f} {pct(0.99):.1f} {cpu_us:.0f} {ok / max(elapsed - 0.0, 1e-9):.0f}")
PY
}

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
