#!/usr/bin/env bash
# Durability modes side by side (local and store; a local-directory store, then s3s-fs),
# with the host's disk as the baseline: fsync latency, untar + sync, a big write + fsync,
# and how far the store trails a local-mode sprite under steady writes. Needs root;
# removes every sprite it made.
#
#   sudo ./bench/durability.sh                        # FILES=50000 SIZE_MB=1024 APPENDS=300
#   sudo FILES=5000 SIZE_MB=256 ./bench/durability.sh # quicker
#   sudo STORES=s3s-fs ./bench/durability.sh          # one store (or local-directory)
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench -p sprite --bench durability
