#!/usr/bin/env bash
# RAM per registration on one node, told apart from the transient peak of a burst. Two bursts of
# N new registrations (SIPp, digest, UDP, RATE/s) into one node; RSS (`rss_kib`) is read before,
# 3 s after the first burst, and 40 s after each burst (Timer J, 32 s, has then ended
# every lingering transaction). The first burst's growth includes what a burst holds while it
# lasts (lingering transactions, sled's page cache filling); the allocator keeps those pages and
# the second burst reuses them, so the second burst's growth is what each registration held
# costs. Bounded: 2 × N registrations, each burst at most N/RATE × 4 + 40 s.
#
# Usage: bench/memory.sh     (installs sip-tester if missing; builds release)
# Env:   N=100000 RATE=4000 BIN=target/release/sipmesh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
N=${N:-100000}
RATE=${RATE:-4000}
STEP_SECONDS=$(((N + RATE - 1) / RATE))
NUSERS=$((2 * N))
source "$ROOT/bench/lib.sh"

start_sipmesh 1
csv1=$(reg_csv 0 "$N")
csv2=$(reg_csv "$N" "$N")
burst() { # $1 = csv; prints the step's summary
  run_step reg "$RATE" "$SIP0" -sf "$ROOT/bench/scenarios/reg.xml" -inf "$1" -key contact_hp 127.0.0.1:5099 -t u1
}
per_reg() { echo $((($2 - $1) * 1024 / $3)); }

sleep 2
r0=$(rss_kib)
read -r ok1 failed1 _ _ _ cpu1 _ <<<"$(burst "$csv1")"
sleep 3
r1=$(rss_kib)
sleep 37
r2=$(rss_kib)
read -r ok2 failed2 _ _ _ cpu2 _ <<<"$(burst "$csv2")"
sleep 40
r3=$(rss_kib)
echo "| measure | value |"
echo "| --- | --- |"
echo "| burst 1: registered, failed, CPU µs per REGISTER | $ok1, $failed1, $cpu1 |"
echo "| burst 2: registered, failed, CPU µs per REGISTER | $ok2, $failed2, $cpu2 |"
echo "| RSS at rest before the bursts | $r0 KiB |"
echo "| growth per registration, 3 s after burst 1 ($N held) | $(per_reg "$r0" "$r1" "$N") B |"
echo "| growth per registration, 40 s after burst 1 ($N held) | $(per_reg "$r0" "$r2" "$N") B |"
echo "| growth per registration of burst 2, 40 s after it (each registration held) | $(per_reg "$r2" "$r3" "$N") B |"
echo "| growth per registration over both, 40 s after ($((2 * N)) held) | $(per_reg "$r0" "$r3" $((2 * N))) B |"
