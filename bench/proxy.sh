#!/usr/bin/env bash
# URL proxy and file-system API benchmark: small-request latency and a 256 MiB download,
# direct to a server in a sprite vs through the proxy; and a 1 GiB `sprite cp` each way
# vs `cp` on the host. Needs root.
# (URL part: direct to a server
# in a sprite vs through the proxy, same client. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench -p sprite --bench proxy
