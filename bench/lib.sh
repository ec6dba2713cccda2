# Shared by bench/run.sh, bench/profile.sh and bench/soak.sh: install the tools, build, start
# targets (sipmesh nodes, Kamailio), run one SIPp step and measure the target's CPU.
# Callers set ROOT, STEP_SECONDS and (optionally) NUSERS and BIN before sourcing this file.
# shellcheck shell=bash
need=()
command -v sipp >/dev/null || need+=(sip-tester)
command -v kamailio >/dev/null || need+=(kamailio)
if ((${#need[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# BIN= picks another binary (an older build, for a before/after in one sitting).
if [ -z "${BIN:-}" ]; then
  cargo build --release --locked -q
  BIN=$ROOT/target/release/sipmesh
fi
WORK=$(mktemp -d /tmp/sipmesh-bench.XXXXXX)
PIDS=()
# Everything started here is stopped by PID.
cleanup() {
  for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]:-}"; do # wait (bounded) so the ports are free for the next run
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  done
}
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
NUSERS=${NUSERS:-40000}
python3 - "$WORK" "$NUSERS" <<'PY'
import sys
work, n = sys.argv[1], int(sys.argv[2])
with open(f"{work}/users.csv", "w") as f:
    f.write("callee,secret\ncaller,secret\ncallee0,secret\ncallee1,secret\ncallee2,secret\n")
    for i in range(n):
        f.write(f"bench{i:05d},secret\n")
with open(f"{work}/reg.csv", "w") as f:
    f.write("SEQUENTIAL\n")
    for i in range(min(n, 100000)):
        f.write(f"bench{i:05d};[authentication username=bench{i:05d} password=secret]\n")
with open(f"{work}/callee.csv", "w") as f:
    f.write("SEQUENTIAL\ncallee;[authentication username=callee password=secret]\n")
with open(f"{work}/callees.csv", "w") as f:
    f.write("SEQUENTIAL\ncallee\n")
for i in range(3):
    with open(f"{work}/callee{i}.csv", "w") as f:
        f.write(f"SEQUENTIAL\ncallee{i};[authentication username=callee{i} password=secret]\n")
    with open(f"{work}/callees{i}.csv", "w") as f:
        f.write(f"SEQUENTIAL\ncallee{i}\n")
PY

# The admin token of the benchmark's nodes (SIPp sends from 127.0.0.1, a trusted source: the
# benchmark measures the SIP path, not the throttle).
BENCH_TOKEN=${BENCH_TOKEN:-bench-admin-token-0123456789}

start_sipmesh() { # $1 = number of nodes; sets TARGET_PIDS, SIP0, SIPN (last node), HTTP0
  local n=$1 i
  TARGET_PIDS=()
  local seed=""
  for ((i = 0; i < n; i++)); do
    local dir="$WORK/node$n-$i"
    local args=(node --data-dir "$dir" --sip-listen "127.0.0.1:$((5200 + 10 * i))"
      --p2p-listen "/ip4/127.0.0.1/tcp/$((4200 + i))" --http-listen "127.0.0.1:$((8200 + i))"
      --auth-invites false --admin-token "$BENCH_TOKEN" --trusted-source 127.0.0.1)
    [[ -n $seed ]] && args+=(--bootstrap "$seed")
    env RUST_LOG=warn ${NODE_ENV:-} "$BIN" "${args[@]}" >"$WORK/node$n-$i.log" 2>&1 &
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
  python3 -c 'import json,sys; print(json.dumps({"csv": open(sys.argv[1]).read()}))' "$WORK/users.csv" |
    curl -sf -X POST -H "Authorization: Bearer $BENCH_TOKEN" -H 'Content-Type: application/json' \
      --data-binary @- http://127.0.0.1:8200/v1/users/import >/dev/null
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

# Start one SIPp instance in directory $1 against server $2 (rate $3, count $4), with the
# scenario arguments after; its PID goes to PIDS and to STEP_PIDS.
sipp_start() {
  local d=$1 server=$2 rate=$3 n=$4; shift 4
  mkdir -p "$d"
  (cd "$d" && exec sipp "$@" -buff_size 4194304 -m "$n" -r "$rate" -l $((rate * 4 + 10)) -i 127.0.0.1 -nostdin \
    -timeout $((STEP_SECONDS * 4 + 40))s -trace_stat -fd 1 -trace_rtt -rtt_freq 1 "$server" >/dev/null 2>&1) &
  PIDS+=($!)
  STEP_PIDS+=($!)
}

# Wait for STEP_PIDS and summarise directory $1 (every SIPp instance under it): prints
# "ok failed retrans p50 p99 cpu_us_per_op achieved_per_s". Needs BEFORE (ticks) and T0.
step_result() {
  local d=$1 p
  for p in "${STEP_PIDS[@]}"; do wait "$p" || true; done
  local after t1
  t1=$(date +%s.%N)
  after=$(ticks "${TARGET_PIDS[@]}")
  python3 - "$d" "$BEFORE" "$after" "$HZ" "$T0" "$t1" <<'PY'
import csv, glob, sys
d, before, after, hz, t0, t1 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
ok = failed = retrans = 0
for f in glob.glob(f"{d}/**/*_.csv", recursive=True):
    rows = list(csv.reader(open(f), delimiter=";"))
    if len(rows) >= 2:
        h, last = rows[0], rows[-1]
        col = lambda name: int(last[h.index(name)]) if name in h else 0
        ok += col("SuccessfulCall(C)")
        failed += col("FailedCall(C)")
        retrans += col("Retransmissions(C)")
rtts = []
for f in glob.glob(f"{d}/**/*_rtt.csv", recursive=True):
    for r in list(csv.reader(open(f), delimiter=";"))[1:]:
        try:
            if r[2].strip() == "1":
                rtts.append(float(r[1]))
        except (IndexError, ValueError):
            pass
rtts.sort()
pct = lambda p: rtts[min(len(rtts) - 1, int(p * (len(rtts) - 1)))] if rtts else float("nan")
cpu_us = (after - before) / hz * 1e6 / max(ok, 1)
print(f"{ok} {failed} {retrans} {pct(0.5):.1f} {pct(0.99):.1f} {cpu_us:.0f} {ok / max(t1 - t0, 1e-9):.0f}")
PY
}

# Begin a measured step: CPU ticks and start time of the target.
step_begin() {
  STEP_PIDS=()
  BEFORE=$(ticks "${TARGET_PIDS[@]}")
  T0=$(date +%s.%N)
}

# One SIPp instance for STEP_SECONDS: run_step KIND RATE SERVER SCENARIO-ARGS...
run_step() {
  local kind=$1 rate=$2 server=$3; shift 3
  local d="$WORK/step-$kind-$rate-$RANDOM"
  step_begin
  sipp_start "$d" "$server" "$rate" $((rate * STEP_SECONDS)) "$@"
  step_result "$d"
}

# A SIPp injection file of users bench<offset>..bench<offset+n-1>; prints its path.
reg_csv() {
  local f="$WORK/reg-$1-$2.csv"
  python3 - "$f" "$1" "$2" <<'PY'
import sys
f, off, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(f, "w") as out:
    out.write("SEQUENTIAL\n")
    for i in range(off, off + n):
        out.write(f"bench{i:05d};[authentication username=bench{i:05d} password=secret]\n")
PY
  echo "$f"
}

# Resident memory of the target, in KiB (summed over its processes).
rss_kib() {
  local t=0 p
  for p in "${TARGET_PIDS[@]}"; do
    t=$((t + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status")))
  done
  echo "$t"
}


# Call setup latency with sub-millisecond resolution, from SIPp's message trace: calls at
# rate $1 for STEP_SECONDS through server $2 (the callee must be registered); prints
# "p50_ms p99_ms" of INVITE sent -> 200 received.
latency_step() {
  local rate=$1 server=$2
  local d="$WORK/latency-$rate-$RANDOM"
  mkdir -p "$d"
  (cd "$d" && exec sipp -sf "$ROOT/bench/scenarios/uac.xml" -inf "$WORK/callees.csv" -s caller -au caller -ap secret \
    -d "${HOLD_MS:-1000}" -t u1 -buff_size 4194304 -m $((rate * STEP_SECONDS)) -r "$rate" -i 127.0.0.1 -nostdin \
    -timeout $((STEP_SECONDS * 4 + 40))s -trace_msg "$server" >/dev/null 2>&1) &
  local p=$!
  PIDS+=($p)
  wait "$p" || true
  python3 - "$d" <<'PY'
import glob, re, sys
from datetime import datetime
d = sys.argv[1]
sent, done = {}, {}
for f in glob.glob(f"{d}/*_messages.log"):
    block, stamp = [], None
    def flush():
        if stamp is None or len(block) < 3:
            return
        direction, first = block[0], block[2] if len(block) > 2 else ""
        text = "\n".join(block)
        cid = re.search(r"^Call-ID:\s*(\S+)", text, re.M)
        cseq = re.search(r"^CSeq:\s*\d+\s+(\w+)", text, re.M)
        if not cid or not cseq or cseq.group(1) != "INVITE":
            return
        c = cid.group(1)
        if "sent" in direction and first.startswith("INVITE ") and c not in sent:
            sent[c] = stamp
        if "received" in direction and first.startswith("SIP/2.0 200") and c not in done:
            done[c] = stamp
    for line in open(f, errors="replace"):
        line = line.rstrip("\r\n")
        m = re.match(r"^-{20,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)", line)
        if m:
            flush()
            block, stamp = [], datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
        else:
            block.append(line)
    flush()
lat = sorted((done[c] - sent[c]) * 1000 for c in done if c in sent)
pct = lambda p: lat[min(len(lat) - 1, int(p * (len(lat) - 1)))] if lat else float("nan")
print(f"{pct(0.5):.2f} {pct(0.99):.2f}")
PY
}
