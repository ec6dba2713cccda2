#!/usr/bin/env bash
# Admin listings at scale: 3 real nodes (release build) on loopback, NUSERS users imported,
# then CALLS long calls (SIPp, held HOLD ms, CPS a second) entering node 0 toward a UAS
# registered at node 2. Times, through node 1: one page of users, `sipmesh user list`, one
# page of dialogs, `sipmesh dialogs list`, and ending the last dialog of the first page.
#
# Usage: bench/listing.sh
# Env:   NUSERS=160000 CALLS=30000 CPS=500 HOLD=180000 BIN=target/release/sipmesh
# Stops only what it started, by PID. Every SIPp run is bounded in count and time.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STEP_SECONDS=10
NUSERS=${NUSERS:-160000}
CALLS=${CALLS:-30000}
CPS=${CPS:-500}
HOLD=${HOLD:-180000}
source "$ROOT/bench/lib.sh"
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }'; }
start_sipmesh 3
echo "3 nodes, $NUSERS users imported"
H=http://127.0.0.1:8201
t=$(date +%s.%N); code=$(curl -s -o $WORK/u1.json -w '%{http_code}' -m 120 "$H/v1/users?limit=1000"); e=$(since "$t")
echo "GET /v1/users?limit=1000: $code in $e s, $(python3 -c 'import json,sys; v=json.load(open(sys.argv[1])); print(len(v.get("users",[])), "users, next", v.get("next"))' $WORK/u1.json 2>/dev/null)"
t=$(date +%s.%N); n=$(timeout 600 env SIPMESH_ADMIN_TOKEN=$BENCH_TOKEN "$BIN" user list --node $H 2>$WORK/ul.err | wc -l); e=$(since "$t")
echo "sipmesh user list: $n lines in $e s; stderr: $(head -c 300 $WORK/ul.err)"
(cd "$WORK" && exec sipp -sf "$ROOT/bench/scenarios/uas.xml" -buff_size 4194304 -i 127.0.0.1 -p 5099 -t u1 -nostdin >/dev/null 2>&1) &
PIDS+=($!)
sleep 1
(cd "$WORK" && sipp -sf "$ROOT/bench/scenarios/reg.xml" -inf "$WORK/callee.csv" -m 1 -i 127.0.0.1 -key contact_hp 127.0.0.1:5099 -nostdin "$SIPN" >/dev/null 2>&1)
(cd "$WORK" && exec sipp -sf "$ROOT/bench/scenarios/uac.xml" -inf "$WORK/callees.csv" -s caller -au caller -ap secret -d $HOLD -t u1 -buff_size 4194304 -m $CALLS -r $CPS -l $((CALLS + 10)) -i 127.0.0.1 -nostdin -timeout $((CALLS / CPS + HOLD / 1000 + 60))s "$SIP0" >/dev/null 2>&1) &
PIDS+=($!)
sleep $((CALLS / CPS + 15))
echo "node 0 is on the path of $(curl -s http://127.0.0.1:8200/v1/status | python3 -c 'import json,sys; print(json.load(sys.stdin).get("dialogs"))') dialogs"
t=$(date +%s.%N); code=$(curl -s -o $WORK/d1.json -w '%{http_code}' -m 120 "$H/v1/dialogs"); e=$(since "$t")
echo "GET /v1/dialogs from node 1: $code in $e s, $(python3 -c 'import json,sys; v=json.load(open(sys.argv[1])); print(len(v.get("dialogs",[])), "dialogs, next", (v.get("next") or "")[:30], v.get("error","")[:200])' $WORK/d1.json 2>/dev/null)"
t=$(date +%s.%N); n=$(timeout 600 env SIPMESH_ADMIN_TOKEN=$BENCH_TOKEN "$BIN" dialogs list --node $H 2>$WORK/dl.err | grep -c -- ' -> '); e=$(since "$t")
echo "sipmesh dialogs list: $n dialogs in $e s; stderr: $(head -c 300 $WORK/dl.err)"
id=$(python3 -c 'import json,sys; v=json.load(open(sys.argv[1])); d=v.get("dialogs",[]); print(d[-1]["id"] if d else "")' $WORK/d1.json 2>/dev/null)
if [ -n "$id" ]; then
  enc=$(python3 -c 'import urllib.parse,sys; print(urllib.parse.quote(sys.argv[1], safe=""))' "$id")
  t=$(date +%s.%N); code=$(curl -s -o $WORK/end.json -w '%{http_code}' -m 120 -X DELETE -H "Authorization: Bearer $BENCH_TOKEN" "$H/v1/dialogs/$enc"); e=$(since "$t")
  echo "DELETE one dialog via node 1: $code in $e s $(head -c 200 $WORK/end.json)"
fi
