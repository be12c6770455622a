#!/usr/bin/env bash
# URL proxy benchmark: small-request latency and a 256 MiB download, direct to a server
# in a sprite vs through the proxy, same client. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench -p sprite --bench proxy
