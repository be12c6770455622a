#!/usr/bin/env bash
# Create time flat in the number of sprites: create → first exec (no pool) on an empty
# host, with SPRITES sprites on it (WARM of them asleep warm), and on the host emptied
# again, side by side in one run; growth is against the faster of the two empty phases.
# Each phase starts once the storage process has uploaded nothing for 10 s (after the
# fill that takes about 80 s: the kernel writes the fill's dirty pages back for up to
# 30 s, and each becomes an upload) and the CPUs are idle.
# Needs root; removes every sprite it made (the test daemon's harness).
#
#   sudo ./bench/scale.sh                          # SPRITES=1000 WARM=800 RUNS=20
#   sudo SPRITES=200 WARM=160 ./bench/scale.sh
#   sudo PAUSE_MS=300 ./bench/scale.sh           # a pause after each destroy
#   sudo QUIET_EACH=0 ./bench/scale.sh           # no wait for quiet CPUs after each destroy
#   sudo RUNS=40 WARMUP=10 ./bench/scale.sh      # more creates a phase, more unmeasured first
#   sudo HALT_POLL_NS=200000 ./bench/scale.sh   # idle vCPUs poll 200 us before halting (this VM: 0)
#   sudo PERF=1 RUNS=200 ./bench/scale.sh        # perf record -a -g of each phase and of the idle full host
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench -p sprite --bench scale
