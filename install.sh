#!/usr/bin/env bash
# Installs everything sprites needs on a Debian or Ubuntu host: system packages, a Rust
# toolchain if there is none, and the `sprite` binary in /usr/local/bin.
set -euo pipefail
cd "$(dirname "$0")"

if [ "$(id -u)" != 0 ]; then
    echo "error: install.sh installs system packages and needs root" >&2
    echo "hint: sudo ./install.sh" >&2
    exit 1
fi

echo "== system packages"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq build-essential pkg-config curl ca-certificates debootstrap \
    busybox-static python3-venv e2fsprogs iproute2 procps nftables conntrack \
    protobuf-compiler zstd xz-utils npm >/dev/null

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "== rust toolchain (rustup)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH="$HOME/.cargo/bin:$PATH"
fi

echo "== building sprite (release)"
cargo install --locked --path crates/sprite --root /usr/local
echo "installed $(/usr/local/bin/sprite version)"

# A system service where systemd runs (the CLI starts the daemon itself elsewhere).
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    echo "== systemd service sprites"
    install -m 0644 scripts/sprites.service /etc/systemd/system/sprites.service
    systemctl daemon-reload
    systemctl enable --now sprites.service
    echo "the daemon runs as sprites.service (journalctl -u sprites for its log)"
else
    echo "no systemd here: the first sprite command starts the daemon (log: /var/lib/sprites/daemon.log)"
fi
echo "next: sudo sprite create    (creates a sprite and opens its console)"
