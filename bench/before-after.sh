#!/usr/bin/env bash
# Before and after, back to back in one run: builds REV (default 6793eff, the tree before
# issue 14's work) in a git worktree with its own target directory, and runs the
# scale, lifecycle and network-attach benchmarks old then new. The scale benchmark is
# copied into the old tree when it has none. Needs root; every bench removes what it made.
#
#   sudo ./bench/before-after.sh            # REV=6793eff
#   sudo REV=HEAD~3 ./bench/before-after.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rev="${REV:-6793eff}"
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
echo "== building $rev in $old (first time: several minutes)"
(cd "$old" && CARGO_TARGET_DIR="$old_target" cargo bench -p sprite --no-run -q)
run_both() { # name, command...
    local name=$1; shift
    echo "== $name: $rev"
    (cd "$old" && CARGO_TARGET_DIR="$old_target" "$@") > "$out/$name-before.log" 2>&1
    echo "== $name: working tree"
    "$@" > "$out/$name-after.log" 2>&1
}
run_both scale cargo bench -p sprite --bench scale
run_both lifecycle cargo bench -p sprite --bench lifecycle
for live in 0 1000; do
    export SPRITE_NET_ROUNDS=20 SPRITE_NET_LIVE_SLOTS=$live
    run_both "net-$live" \
        cargo test --release -p sprite-sandbox --test net attach_and_detach_timing -- --ignored --nocapture
done
for name in scale lifecycle net-0 net-1000; do
    for side in before after; do
        echo "--- $name, $side"
        grep -E 'empty host|sprites on the host|growth|create →|create API|exec `true` over WebSocket|RSS|install with' \
            "$out/$name-$side.log" || true
    done
done
