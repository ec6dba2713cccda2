#!/usr/bin/env bash
# The Jepsen-style soak of the keyspace (tests/jepsen.rs) on real nodes in network namespaces:
# RUNS runs (default 10) of SECS seconds of workload each (default 120), with a fifth node
# joining mid-run and decommissioned near the end, and a node redeployed with a new identity
# whose old one an operator removes (JOIN=1, the default, as in CI's single 40 s run; JOIN=0 leaves
# them out). Prints each run's
# outcome and a summary: runs that lost an acknowledged add or brought back an acknowledged
# delete. Needs root (network namespaces, nftables), as the test suite does. Not part of CI.
#
# Usage: scripts/jepsen.sh        Env: RUNS=10 SECS=120 JOIN=1
set -uo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-10}
SECS=${SECS:-120}
JOIN=${JOIN:-1}
cargo test --locked -q --test jepsen --no-run
failed=0
for ((r = 1; r <= RUNS; r++)); do
  start=$(date +%s)
  out=$(SIPMESH_JEPSEN_SECS=$SECS SIPMESH_JEPSEN_JOIN=$JOIN \
    cargo test --locked -q --test jepsen -- --nocapture 2>&1)
  status=$?
  took=$(($(date +%s) - start))
  summary=$(grep -E "acknowledged, " <<<"$out" | head -1)
  if ((status == 0)); then
    echo "run $r: ok in ${took}s: $summary"
  else
    failed=$((failed + 1))
    echo "run $r: FAILED in ${took}s: $summary"
    grep -E "lost|came back|panicked" <<<"$out" | cut -c1-400 | head -3
  fi
done
echo "jepsen soak: $((RUNS - failed)) of $RUNS runs kept every acknowledged write (SECS=$SECS JOIN=$JOIN)"
((failed == 0))
