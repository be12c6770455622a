#!/usr/bin/env bash
# URL proxy and file-system API benchmark, one run, side by side: small-request latency
# and a 256 MiB download, direct to a server in a sprite vs through the URL proxy (same
# client); and a 1 GiB `sprite cp` into and out of the sprite vs `cp` + `sync` on the
# host. Needs root. Results: stdout and target/bench/proxy.json.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench -p sprite --bench proxy
