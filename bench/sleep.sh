#!/usr/bin/env bash
# Sleep, wake and pool benchmark (create from the pool vs without vs the namespace floor,
# warm and cold wake, memory of 100 warm sprites, what 100 cold sprites keep). Needs root.
# SPRITE_BENCH_IMAGE=busybox picks the tiny image; RUNS=N samples per measure (20).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench -p sprite --bench sleep
