#!/bin/bash
# Builds the `dev` image on top of a debootstrap root: run by the daemon inside that
# root (chroot, own mount and pid namespaces, /proc mounted), as root. Everything comes
# from Debian's archive, the npm registry or PyPI; nothing else is downloaded.
#
# Environment (set by the daemon):
#   SPRITE_NODE_MAJOR   Node.js major version to install (the newest release of it)
#   SPRITE_NODE_ARCH    x64 or arm64 (npm package node-linux-<arch>)
#   SPRITE_NPM_REGISTRY the npm registry (default https://registry.npmjs.org)
#   SPRITE_BUILD_CA     a CA bundle to trust during the build (the host's), or empty
#   SPRITE_AGENTS       npm packages installed globally (the coding agents)
# Each step prints a line starting with "step: ", which the daemon shows as progress.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 HOME=/root
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
registry="${SPRITE_NPM_REGISTRY:-https://registry.npmjs.org}"
registry="${registry%/}"
work=$(mktemp -d /tmp/dev-build.XXXXXX)
bundle=/etc/ssl/certs/ca-certificates.crt
cleanup() {
    if [ -f "$work/ca-certificates.crt" ]; then cp "$work/ca-certificates.crt" "$bundle"; fi
    rm -rf "$work"
}
trap cleanup EXIT

echo "step: apt-get update and upgrade (package lists stay in the image)"
apt-get update -q
apt-get -y -q -o Dpkg::Options::=--force-confold upgrade

# The host's CAs stand in for the image's own while it downloads (python, pip and curl
# read the system bundle; node its own plus NODE_EXTRA_CA_CERTS), so the build works
# behind a proxy the host trusts. The image's own bundle is put back at the end.
if [ -n "${SPRITE_BUILD_CA:-}" ]; then
    cp "$bundle" "$work/ca-certificates.crt"
    cp "$SPRITE_BUILD_CA" "$bundle"
    export NODE_EXTRA_CA_CERTS="$SPRITE_BUILD_CA"
fi

# Downloads the newest version of an npm package (of one major version when given),
# checks it against the registry's sha512, and prints where it is and its version.
npm_fetch() {
    python3 - "$registry" "$1" "${2:-}" "$work" <<'PY'
import base64, hashlib, json, sys, urllib.request
registry, name, major, work = sys.argv[1:5]
req = urllib.request.Request(f"{registry}/{name}",
    headers={"Accept": "application/vnd.npm.install-v1+json"})
meta = json.load(urllib.request.urlopen(req, timeout=60))
def key(v):
    return tuple(int(p) if p.isdigit() else -1 for p in v.split("-")[0].split("."))
if major:
    found = [v for v in meta["versions"] if v.split(".")[0] == major and "-" not in v]
    if not found:
        sys.exit(f"the npm registry has no {name} {major}.x")
    version = max(found, key=key)
else:
    version = meta["dist-tags"]["latest"]
dist = meta["versions"][version]["dist"]
data = urllib.request.urlopen(dist["tarball"], timeout=300).read()
algo, _, want = dist["integrity"].partition("-")
if algo != "sha512" or base64.b64decode(want) != hashlib.sha512(data).digest():
    sys.exit(f"{name} {version}: the download does not match the registry's sha512")
path = f"{work}/{name}.tgz"
open(path, "wb").write(data)
print(path, version)
PY
}

echo "step: Node.js ${SPRITE_NODE_MAJOR} from the npm registry (node-linux-${SPRITE_NODE_ARCH})"
fetched=$(npm_fetch "node-linux-${SPRITE_NODE_ARCH}" "$SPRITE_NODE_MAJOR")
read -r node_tgz node_version <<<"$fetched"
mkdir -p "$work/node"
tar -xzf "$node_tgz" -C "$work/node"
cp -a "$work/node/package/bin/node" /usr/local/bin/node
cp -a "$work/node/package/include" "$work/node/package/share" /usr/local/ 2>/dev/null || true
/usr/local/bin/node --version

echo "step: npm from the npm registry"
fetched=$(npm_fetch npm "")
read -r npm_tgz npm_version <<<"$fetched"
mkdir -p "$work/npm"
tar -xzf "$npm_tgz" -C "$work/npm"
node "$work/npm/package/bin/npm-cli.js" install -g --no-audit --no-fund "$npm_tgz"
echo "node $node_version, npm $npm_version"

echo "step: coding agents from npm: $SPRITE_AGENTS"
# npm runs no install scripts but those allowed: the agents' own (they put their
# native binary in place) and node-pty's (Gemini CLI's terminal; built here against
# the headers that came with node). keytar's would download from GitHub: left out, so
# Gemini CLI keeps its credentials in a file.
allow=(--allow-scripts=node-pty)
for agent in $SPRITE_AGENTS; do allow+=("--allow-scripts=$agent"); done
# shellcheck disable=SC2086 # a list of package names
npm_config_nodedir=/usr/local npm install -g --no-audit --no-fund "${allow[@]}" $SPRITE_AGENTS
npm cache clean --force

echo "step: uv from PyPI"
python3 -m pip install --quiet --no-cache-dir --break-system-packages --root-user-action=ignore uv
uv --version

echo "step: tidying up"
apt-get clean
rm -rf /root/.npm /root/.cache /tmp/node-compile-cache
