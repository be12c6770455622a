#!/usr/bin/env bash
# Create time flat in the number of sprites: create → first exec (no pool) on an empty
# host and with SPRITES sprites on it (WARM of them asleep warm), side by side in one run.
# Both phases start once the storage process has uploaded nothing for 10 s (after the
# fill that takes about 80 s: the kernel writes the fill's dirty pages back for up to
# 30 s, and each becomes an upload) and the CPUs are idle.
# Needs root; removes every sprite it made (the test daemon's harness).
#
#   sudo ./bench/scale.sh                          # SPRITES=1000 WARM=800 RUNS=20
#   sudo SPRITES=200 WARM=160 ./bench/scale.sh
#   sudo PAUSE_MS=300 ./bench/scale.sh           # a pause before each create
#   sudo PERF=1 RUNS=200 ./bench/scale.sh        # perf record -a -g of each phase and of the idle full host
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench -p sprite --bench scale
