#!/usr/bin/env bash
# Before and after, back to back in one run: builds REV (default 6793eff, the tree before
# issue 14's work) in a git worktree with its own target directory, and runs the
# benchmarks old then new: scale, lifecycle, sleep, network attach (net) and the URL proxy
# (proxy, without its file-system copies). The scale and proxy benchmarks of the working
# tree are copied into the old tree (the old proxy bench had no HTTP/2 measure). Needs
# root; every bench removes what it made.
#
#   sudo ./bench/before-after.sh                          # REV=6793eff, every bench
#   sudo REV=HEAD~3 BENCHES="proxy" ./bench/before-after.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rev="${REV:-6793eff}"
benches="${BENCHES:-scale lifecycle sleep net proxy}"
old="target/before-$rev"
old_target="$PWD/target/before-$rev-target"
out="target/bench/before-after"
mkdir -p "$out"
if [ ! -d "$old" ]; then
    git worktree add -f "$old" "$rev" >/dev/null
fi
if [ ! -f "$old/crates/sprite/benches/scale.rs" ]; then
    cp crates/sprite/benches/scale.rs "$old/crates/sprite/benches/"
    printf '\n[[bench]]\nname = "scale"\nharness = false\n' >> "$old/crates/sprite/Cargo.toml"
fi
cp crates/sprite/benches/proxy.rs "$old/crates/sprite/benches/proxy.rs"
sed -i 's/^reqwest = { version = "0.12", default-features = false, features = \["json"\] }$/reqwest = { version = "0.12", default-features = false, features = ["json", "http2"] }/' \
    "$old/crates/sprite/Cargo.toml"
echo "== building $rev in $old (first time: several minutes)"
(cd "$old" && CARGO_TARGET_DIR="$old_target" cargo bench -p sprite --no-run -q)
run_both() { # name, command...
    local name=$1; shift
    echo "== $name: $rev"
    (cd "$old" && CARGO_TARGET_DIR="$old_target" "$@") > "$out/$name-before.log" 2>&1
    echo "== $name: working tree"
    "$@" > "$out/$name-after.log" 2>&1
}
names=()
for bench in $benches; do
    case $bench in
    scale | lifecycle | sleep)
        run_both "$bench" cargo bench -p sprite --bench "$bench"
        names+=("$bench")
        ;;
    net)
        for live in 0 1000; do
            export SPRITE_NET_ROUNDS=20 SPRITE_NET_LIVE_SLOTS=$live
            run_both "net-$live" \
                cargo test --release -p sprite-sandbox --test net attach_and_detach_timing -- --ignored --nocapture
            names+=("net-$live")
        done
        ;;
    proxy)
        PROXY_FS=0 run_both proxy cargo bench -p sprite --bench proxy
        names+=(proxy)
        ;;
    *)
        echo "unknown bench $bench (scale, lifecycle, sleep, net, proxy)" >&2
        exit 2
        ;;
    esac
done
for name in "${names[@]}"; do
    for side in before after; do
        echo "--- $name, $side"
        grep -E 'empty host|sprites on the host|growth|create →|create API|exec `true` over WebSocket|RSS|install with|small request|added by the proxy|download \(|HTTP/2|from the pool|wake from|warm sprite|running sprite' \
            "$out/$name-$side.log" || true
    done
done
