#!/usr/bin/env bash
# Web console benchmark (needs root and Debian's chromium): page load (first byte and
# load event) and terminal keystroke echo in a real browser, beside the same echo from a
# plain WebSocket client. Results: stdout and target/bench/console.json.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v chromium >/dev/null || { echo "error: needs chromium (apt-get install chromium)" >&2; exit 1; }
exec cargo bench -p sprite --bench console
