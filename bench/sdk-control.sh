#!/usr/bin/env bash
# Control-mode exec vs plain exec, from the official SDKs (issue 13): p50 and p99 of
# `true` on a reused control socket vs a fresh exec WebSocket per command, from
# sprites-py and from @fly/sprites on Node 24, against a release daemon with the
# default Debian image. Needs root, and the SDKs scripts/test.sh installs. JSON in
# target/bench/sdk-control.json. Removes its sprite, daemon, mounts and nft table.
set -euo pipefail
cd "$(dirname "$0")/.."
python=target/sdk-venv/bin/python
node=target/sdk-js/node_modules/.bin/node
sdk_js="$PWD/target/sdk-js/node_modules/@fly/sprites/dist/index.js"
if [ ! -x "$python" ] || [ ! -x "$node" ]; then
    echo "error: the SDKs are not installed; run ./scripts/test.sh once (it installs them)" >&2
    exit 1
fi
cargo build --release -q -p sprite
data=$(mktemp -d /tmp/sprite-bench-XXXXXX)
chmod 711 "$data"
mkdir -p "$data/images" target/bench
images=${SPRITE_TEST_IMAGES:-/var/tmp/sprites-test-images}
[ -d "$images/debian" ] && ln -s "$images/debian" "$data/images/debian"
port=$((20000 + RANDOM % 10000))
export SPRITES_API_URL="http://127.0.0.1:$port" SPRITE_TOKEN="bench-token-0123456789"
printf 'pool = 0\nproxy_listen = "127.0.0.1:%s"\nnetwork = "10.250.0.0/23"\nwarm_after = "never"\ncold_after = "never"\n' $((port + 1)) > "$data/daemon.toml"
cleanup() {
    set +e
    curl -s -o /dev/null -X DELETE -H "Authorization: Bearer $SPRITE_TOKEN" "$SPRITES_API_URL/v1/sprites/bench-ctl"
    [ -n "${daemon:-}" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null
    # As the test harness does: sprite mounts, then the loop devices over SpriteFS
    # files, then the storage process and its FUSE mount, then the nft table.
    grep -o " $data[^ ]*" /proc/mounts | grep -v "/fs/mnt$" | sort -r | xargs -r -n1 umount -l
    losetup -a | grep "$data" | cut -d: -f1 | xargs -r -n1 losetup -d
    pkill -f "$data"
    sleep 1
    grep -o " $data[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l
    [ -f "$data/network-table" ] && nft delete table $(cat "$data/network-table")
    rm -rf "$data"
}
trap cleanup EXIT
SPRITE_TOKEN=$SPRITE_TOKEN target/release/sprite daemon --listen "127.0.0.1:$port" --image debian \
    --data-dir "$data" --config "$data/daemon.toml" > "$data/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 1 600); do curl -sf "$SPRITES_API_URL/healthz" >/dev/null && break; sleep 0.1; done
curl -sf -X POST -H "Authorization: Bearer $SPRITE_TOKEN" -d '{"name":"bench-ctl"}' "$SPRITES_API_URL/v1/sprites" >/dev/null
py=$("$python" bench/sdk/control.py bench-ctl)
js=$(SPRITES_JS_SDK="$sdk_js" "$node" bench/sdk/control.mjs bench-ctl)
printf '{"python": %s, "js": %s}\n' "$py" "$js" | tee target/bench/sdk-control.json
