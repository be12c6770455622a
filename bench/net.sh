#!/usr/bin/env bash
# What giving a sprite its network costs: attach (veth pair, addresses, route, nftables
# slot) and detach, ROUNDS times on one throwaway network namespace, with LIVE_SLOTS other
# slots in the table (nft reads the table on every change). Needs root, ip and nft; leaves
# nothing behind.
#
#   sudo ./bench/net.sh                  # ROUNDS=20 LIVE_SLOTS=0
#   sudo LIVE_SLOTS=1000 ./bench/net.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SPRITE_NET_ROUNDS="${ROUNDS:-20}" SPRITE_NET_LIVE_SLOTS="${LIVE_SLOTS:-0}" \
    exec cargo test --release -p sprite-sandbox --test net attach_and_detach_timing -- --ignored --nocapture
