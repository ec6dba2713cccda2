#!/usr/bin/env bash
# Membership cost per node as the mesh grows (issue "Grow to thousands of community nodes"):
# real `sipmesh node` processes (release build) on loopback, idle, for each size in SIZES.
# Per size: time until every node sees every member up, then (after SETTLE seconds, for idle
# links and connections to close) over WINDOW seconds of idle the CPU per node (/proc/PID/stat,
# user + system), heartbeats sent per node per second (from /metrics: on streams and as
# datagrams), and established TCP connections per node (ss). Then SIGKILL of two nodes (when the mesh has at
# least 5): seconds until every live node marks both down.
#
# Usage: bench/membership.sh
# Env:   SIZES="3 20"  WINDOW=30  SETTLE=45  BIN=target/release/sipmesh  BASE=29000
# Stops only what it started, by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${SIZES:-"3 20"}
WINDOW=${WINDOW:-30}
SETTLE=${SETTLE:-45}
BASE=${BASE:-29000}
TOKEN=membership-bench-admin-token-0
if [ -z "${BIN:-}" ]; then
  cargo build --release --locked --bin sipmesh >&2
  BIN=target/release/sipmesh
fi
TICKS=$(getconf CLK_TCK)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
status() { curl -fsS "http://127.0.0.1:$((BASE + 200 + $1))/v1/status"; }
heartbeats() {
  curl -fsS "http://127.0.0.1:$((BASE + 200 + $1))/metrics" |
    awk '/^sipmesh_heartbeat_rtt_seconds_count/ {a=$2} /^sipmesh_heartbeat_failures_total/ {b=$2}
      /^sipmesh_heartbeat_datagrams_total/ {c=$2} END {print a + b + c}'
}
connections() { ss -tnpH state established 2>/dev/null | grep -c "pid=$1," || true; }
peers() {
  curl -fsS "http://127.0.0.1:$((BASE + 200 + $1))/metrics" | awk '/^sipmesh_mesh_peers_connected/ {print $2}'
}

echo "| nodes | formed in s | idle CPU per node, median / max % | heartbeats per node per s | TCP connections per node, median / max | peers connected per node (metric), median / max | 2 kills detected by all in s |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for n in $SIZES; do
  dir=$(mktemp -d)
  PIDS=()
  t0=$(date +%s.%N)
  for i in $(seq 0 $((n - 1))); do
    args=(node --data-dir "$dir/n$i" --sip-listen "127.0.0.1:$((BASE + i))"
      --p2p-listen "/ip4/127.0.0.1/tcp/$((BASE + 100 + i))"
      --http-listen "127.0.0.1:$((BASE + 200 + i))" --admin-token "$TOKEN")
    [ "$i" -gt 0 ] && args+=(--bootstrap "/ip4/127.0.0.1/tcp/$((BASE + 100))")
    RUST_LOG=warn "$BIN" "${args[@]}" >/dev/null 2>&1 &
    PIDS+=($!)
  done
  deadline=$((SECONDS + 300))
  for i in $(seq 0 $((n - 1))); do
    until [ "$(status "$i" 2>/dev/null | jq -r .members_up)" = "$n" ]; do
      [ $SECONDS -lt $deadline ] || { echo "mesh of $n did not form" >&2; exit 1; }
      sleep 0.5
    done
  done
  formed=$(echo "$(date +%s.%N) - $t0" | bc)
  sleep "$SETTLE"
  declare -a c0 h0
  for i in $(seq 0 $((n - 1))); do c0[$i]=$(cpu_ticks "${PIDS[$i]}"); h0[$i]=$(heartbeats "$i"); done
  sleep "$WINDOW"
  cpus=() hbs=() conns=() pconns=()
  for i in $(seq 0 $((n - 1))); do
    c1=$(cpu_ticks "${PIDS[$i]}"); h1=$(heartbeats "$i")
    cpus+=("$(echo "scale=3; 100 * ($c1 - ${c0[$i]}) / $TICKS / $WINDOW" | bc)")
    hbs+=("$(echo "scale=2; ($h1 - ${h0[$i]}) / $WINDOW" | bc)")
    conns+=("$(connections "${PIDS[$i]}")")
    pconns+=("$(peers "$i")")
  done
  med() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }
  max() { printf '%s\n' "$@" | sort -g | tail -1; }
  detect="—"
  if [ "$n" -ge 5 ]; then
    a=$((n - 2)) b=$((n - 1))
    pa=$(status "$a" | jq -r .peer_id) pb=$(status "$b" | jq -r .peer_id)
    kill -9 "${PIDS[$a]}" "${PIDS[$b]}"
    k0=$(date +%s.%N)
    deadline=$((SECONDS + 120))
    for i in $(seq 0 $((a - 1))); do
      until [ "$(status "$i" | jq -r --arg a "$pa" --arg b "$pb" \
        '[.members[] | select((.peer_id == $a or .peer_id == $b) and .state == "Down")] | length')" = 2 ]; do
        [ $SECONDS -lt $deadline ] || { echo "kills not detected" >&2; exit 1; }
        sleep 0.2
      done
    done
    detect=$(echo "$(date +%s.%N) - $k0" | bc)
  fi
  printf '| %s | %.1f | %s / %s | %s | %s / %s | %s / %s | %s |\n' "$n" "$formed" "$(med "${cpus[@]}")" \
    "$(max "${cpus[@]}")" "$(med "${hbs[@]}")" "$(med "${conns[@]}")" "$(max "${conns[@]}")" \
    "$(med "${pconns[@]}")" "$(max "${pconns[@]}")" "$detect"
  cleanup
  PIDS=()
  rm -rf "$dir"
done
