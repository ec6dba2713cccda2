#!/usr/bin/env bash
# Rebuilds the vendored JsSIP bundle the browser phone (/phone) uses, from the exact npm
# versions pinned in tests/browser/package-lock.json, with esbuild. The bundle and the licences
# of everything in it are committed (src/ops/page/vendor/), so building sipmesh needs no npm.
set -euo pipefail
cd "$(dirname "$0")/.."
ESBUILD_VERSION=0.28.2
(cd tests/browser && npm ci --no-audit --no-fund)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm init -y >/dev/null && npm install --no-audit --no-fund --save-exact "esbuild@$ESBUILD_VERSION" >/dev/null)
out=src/ops/page/vendor
version=$(node -p "require('./tests/browser/node_modules/jssip/package.json').version")
"$work/node_modules/.bin/esbuild" tests/browser/node_modules/jssip/lib/JsSIP.js \
  --bundle --format=iife --global-name=JsSIP --minify --platform=browser \
  --legal-comments=none --outfile="$out/jssip.min.js"
{
  echo "JsSIP $version (https://jssip.net), bundled with esbuild $ESBUILD_VERSION by scripts/vendor-jssip.sh,"
  echo "with its dependencies. Their licences follow."
  for pkg in jssip debug ms events sdp-transform; do
    dir=tests/browser/node_modules/$pkg
    v=$(node -p "require('./$dir/package.json').version")
    lic=$(ls "$dir" | grep -i -m1 '^licen[cs]e' || true)
    echo
    echo "==== $pkg $v ===="
    if [ -n "$lic" ]; then cat "$dir/$lic"; else node -p "require('./$dir/package.json').license"; fi
  done
} > "$out/LICENSES.txt"
echo "wrote $out/jssip.min.js ($(wc -c < "$out/jssip.min.js") bytes) and $out/LICENSES.txt"
