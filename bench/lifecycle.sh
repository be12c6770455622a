#!/usr/bin/env bash
# Lifecycle benchmark (create, exec, raw-namespace floor, daemon memory). Needs root.
# SPRITE_BENCH_IMAGE=busybox picks the tiny image instead of the default Debian one.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench -p sprite --bench lifecycle
