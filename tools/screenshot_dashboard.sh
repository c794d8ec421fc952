#!/usr/bin/env bash
# Render the asv dashboard (asv publish), serve it (asv preview) and take a screenshot of one
# benchmark's graph with headless Chromium (Debian's package: apt-get install chromium).
# Needs npm (tools/vendor_dashboard.py fetches the page's JavaScript libraries).
# Usage: bash tools/screenshot_dashboard.sh [BENCHMARK] [OUTPUT.png]
set -euo pipefail
cd "$(dirname "$0")/.."
benchmark=${1:-grad_weight.GradWeight.time_grad_weight}
output=${2:-docs/asv-dashboard.png}
port=8765

asv publish >/dev/null
python tools/vendor_dashboard.py .asv/html  # the page's CDN scripts, from npm: no internet here
asv preview --port "$port" >/dev/null 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  curl -sf "http://127.0.0.1:$port/" >/dev/null && break
  sleep 0.2
done
mkdir -p "$(dirname "$output")"
# The flags keep Chromium off the network (this machine has none) and give the page's
# JavaScript time to load the results and draw the graph before the shot.
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$(mktemp -d)" --hide-scrollbars --window-size=1400,900 \
  --virtual-time-budget=15000 --screenshot="$output" \
  "http://127.0.0.1:$port/#$benchmark" 2>/dev/null
echo "wrote $output"
