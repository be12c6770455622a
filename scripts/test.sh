#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, and the end-to-end tests that
# start real daemons, sandboxes, FUSE mounts and loop devices (they need root). Also
# runs the official Python SDK (sprites-py) and JS SDK (@fly/sprites on Node 24) against
# the daemon, installed here from PyPI and npm,
# and the object-store tests against a real S3-compatible server (s3s-fs).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "error: the end-to-end tests start sandboxes and need root" >&2
    echo "hint: run it as root: sudo -E $0" >&2
    exit 1
fi

# Python clients the tests drive: the official SDK, the MCP SDK (the MCP tests'
# client), the Prometheus client library (its text parser reads /metrics) and an
# OpenAPI validator (for /openapi.json).
venv=target/sdk-venv
if ! "$venv/bin/python" -c 'import sprites, mcp, prometheus_client, openapi_spec_validator' 2>/dev/null; then
    echo "== installing sprites-py, mcp, prometheus-client and openapi-spec-validator into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet 'sprites-py==0.7.2' 'mcp==2.3.0' 'prometheus-client==0.21.1' 'openapi-spec-validator==0.7.2'
fi
export SPRITE_SDK_PYTHON="$PWD/$venv/bin/python"

# The official JS SDK on Node 24, both from npm (the `node@24` package brings the
# runtime; any npm can install it).
js=target/sdk-js
if [ ! -x "$js/node_modules/.bin/node" ] || [ ! -f "$js/node_modules/@fly/sprites/dist/index.js" ]; then
    echo "== installing @fly/sprites and Node 24 into $js"
    mkdir -p "$js"
    (cd "$js" && npm install --silent --no-audit --no-fund --prefix . '@fly/sprites@0.1.0' 'node@24' >/dev/null)
fi
export SPRITE_SDK_NODE="$PWD/$js/node_modules/.bin/node"
export SPRITE_SDK_JS="$PWD/$js/node_modules/@fly/sprites/dist/index.js"

# A real S3-compatible server for the object-store tests (no mocks of S3).
if ! command -v s3s-fs >/dev/null 2>&1 && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs" ]; then
    echo "== installing s3s-fs (S3 test server)"
    cargo install --quiet --locked s3s-fs --version 0.14.1 --features binary
fi

# A real etcd for the cluster tests, and protoc to build the etcd client.
if ! command -v etcd >/dev/null 2>&1 || ! command -v protoc >/dev/null 2>&1; then
    echo "== installing etcd-server and protobuf-compiler (cluster tests)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server protobuf-compiler >/dev/null
    # The package may start a system etcd; the tests start their own.
    systemctl disable --now etcd >/dev/null 2>&1 || true
fi

# A real registry and image tools for the image tests (pulls, archives, whiteouts).
if ! command -v docker-registry >/dev/null 2>&1 || ! command -v umoci >/dev/null 2>&1 \
    || ! command -v skopeo >/dev/null 2>&1 || ! command -v htpasswd >/dev/null 2>&1; then
    echo "== installing docker-registry, umoci, skopeo and htpasswd (image tests)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry umoci skopeo apache2-utils zstd >/dev/null
    systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi

# Headless Chromium for the web console's browser test.
if ! command -v chromium >/dev/null 2>&1; then
    echo "== installing chromium (the console's browser test)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

# The console's xterm.js, pinned (the build fetches it too when missing).
[ -f crates/sprite-server/console/vendor/xterm.js ] || ./scripts/console-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --workspace
echo "== fuzz targets, 30 s each (exec queries and frames, init frames, DNS messages, policy JSON, paths, durations, the config file)"
SPRITE_FUZZ_SECONDS="${SPRITE_FUZZ_SECONDS:-30}" cargo test --workspace --lib --bins fuzz_targets:: -- --test-threads=2
echo "== SpriteFS end-to-end tests again, with a real S3 server (s3s-fs) as the object store"
SPRITE_TEST_STORE=s3 cargo test -p sprite --test spritefs

# Nothing a test made may outlive the suite.
leaks=$(find /sys/fs/cgroup -mindepth 2 -maxdepth 3 -type d -path '*/sprites/sprite-*' 2>/dev/null || true)
procs=$(pgrep -af 'sprite (init|daemon)|s3s-fs' || true)
mounts=$(grep -E 'spritefs|sprite-(test|run|views|checkpoint)' /proc/self/mountinfo || true)
# A loop device over a lost FUSE file shows its back file as /<volume>.
loops=$(losetup -n -O NAME,BACK-FILE 2>/dev/null | grep -E ' (.*sprite-test-|/(sprite-|image-|template-))' || true)
# Network: the daemons' nftables tables, the tests' namespaces and links.
nets=$( (nft list tables 2>/dev/null | grep -E 'sprites_|sprt' ; ip netns list 2>/dev/null | grep -E '^sprt' ; ip -br link 2>/dev/null | grep -E '^(sp[0-9a-f]{5}[0-9]|sprti)') || true)
if [ -n "$leaks$procs$mounts$loops$nets" ]; then
    echo "error: the tests left resources behind:" >&2
    echo "$leaks" >&2
    echo "$procs" >&2
    echo "$mounts" >&2
    echo "$loops" >&2
    echo "$nets" >&2
    exit 1
fi
echo "== no cgroups, mounts, loop devices, network tables or sprite processes left behind"
