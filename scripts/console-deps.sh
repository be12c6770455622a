#!/usr/bin/env bash
# Fetches the web console's front-end dependencies, pinned by version and checked
# against the npm registry's sha512 integrity, into crates/sprite-server/console/vendor
# (embedded in the binary at build time; nothing is fetched at run time). Run by the
# sprite-server build when they are missing; needs npm (or a registry mirror in
# npm's config).
set -euo pipefail
cd "$(dirname "$0")/.."
dest=crates/sprite-server/console/vendor
# name@version  integrity  files to keep (path in the package → name in vendor/)
packages=(
  "@xterm/xterm@5.5.0 sha512-hqJHYaQb5OptNunnyAnkHyM8aCjZ1MEIDTQu1iIbbTD/xops91NB5yq1ZK/dC2JDbVWtF23zUtl9JE2NqwT87A== lib/xterm.js:xterm.js css/xterm.css:xterm.css"
  "@xterm/addon-fit@0.10.0 sha512-UFYkDm4HUahf2lnEyHvio51TNGiLK66mqP2JoATy7hRZeXaGMRDr00JiSF7m63vR5WKATF605yEggJKsw0JpMQ== lib/addon-fit.js:addon-fit.js"
)
if ! command -v npm >/dev/null 2>&1; then
    echo "error: the web console needs xterm.js from npm, and npm is not installed" >&2
    echo "hint: apt-get install npm (or run scripts/console-deps.sh where npm is, and copy $dest)" >&2
    exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$dest.tmp"
for entry in "${packages[@]}"; do
    read -r spec integrity files <<<"$entry"
    (cd "$work" && npm pack --silent "$spec" >/dev/null)
    tarball=$(ls "$work"/*.tgz)
    actual="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
    if [ "$actual" != "$integrity" ]; then
        echo "error: $spec does not match its pinned integrity ($actual)" >&2
        exit 1
    fi
    mkdir -p "$work/unpacked"
    tar -xzf "$tarball" -C "$work/unpacked"
    for pair in $files; do
        cp "$work/unpacked/package/${pair%%:*}" "$dest.tmp/${pair##*:}"
    done
    cp "$work/unpacked/package/LICENSE" "$dest.tmp/LICENSE-${spec%@*}" 2>/dev/null || true
    rm -rf "$work/unpacked" "$tarball"
done
rm -rf "$dest"
mv "$dest.tmp" "$dest"
echo "console dependencies in $dest"
