#!/usr/bin/env bash
# Durability soak: kills the storage process under a running sprite 200 times (CI runs
# 20); after every crash each fsynced file must be intact, and e2fsck must find the
# filesystem clean at the end. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
SPRITE_CRASH_ROUNDS="${SPRITE_CRASH_ROUNDS:-200}" exec cargo test -p sprite --test spritefs fsynced_data_survives_storage_crashes -- --nocapture
