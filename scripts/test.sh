#!/usr/bin/env bash
# The whole test suite: installs what the tests need if it is missing, then runs every test of
# the workspace. `.ci/run` calls this same script.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v sipp >/dev/null 2>&1 || need_apt+=(sip-tester)
command -v linphone-daemon >/dev/null 2>&1 || need_apt+=(linphone-cli)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)
# The live mesh page in a real browser (tests/browser.rs), driven by playwright-core on Node.js.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
# A real Prometheus scrapes the nodes and promtool tests the alerting rules (tests/ops.rs);
# systemd-analyze verifies the unit.
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
# tests/nat.rs: a phone in a network namespace behind a masquerading one (iproute2, nftables).
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
# libfaketime runs one node of tests/faults.rs with its wall clock an hour ahead.
[[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 ]] || need_apt+=(faketime)
if ((${#need_apt[@]})); then
  echo "installing: ${need_apt[*]}"
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# PJSIP's PJSUA2 API (PyPI pjsua2-python) for tests/pjsua.rs, in a venv under target/.
export SIPMESH_PYTHON="$PWD/target/pjsua-venv/bin/python"
if ! "$SIPMESH_PYTHON" -c 'import pjsua2' >/dev/null 2>&1; then
  echo "installing: pjsua2-python (PyPI) in target/pjsua-venv"
  rm -rf target/pjsua-venv
  mkdir -p target
  python3 -m venv target/pjsua-venv
  target/pjsua-venv/bin/pip install -q pjsua2-python
fi

# playwright-core (npm), pinned by tests/browser/package-lock.json; it drives Debian's chromium.
if [[ ! -d tests/browser/node_modules/playwright-core ]]; then
  echo "installing: playwright-core (npm) in tests/browser"
  npm ci --prefix tests/browser --no-audit --no-fund --silent
fi

cargo test --workspace --locked
