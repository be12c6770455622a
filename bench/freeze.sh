#!/usr/bin/env bash
# What a checkpoint's FIFREEZE costs in the kernel, without SpriteFS: an ext4 on a loop
# device over a plain host file, frozen and thawed with fsfreeze, with RCU grace
# periods normal and then expedited (/sys/kernel/rcu_expedited, which the SpriteFS
# daemon turns on). The setting is put back as it was. Needs root.
#
#   sudo ./bench/freeze.sh          # ROUNDS=10 by default
set -euo pipefail
ROUNDS=${ROUNDS:-10}
WORK=$(mktemp -d /var/tmp/sprite-freeze-XXXXXX)
KNOB=/sys/kernel/rcu_expedited
BEFORE=$(cat "$KNOB")
DEVICE=
cleanup() {
    echo "$BEFORE" > "$KNOB"
    umount "$WORK/mnt" 2>/dev/null || true
    [ -n "$DEVICE" ] && losetup -d "$DEVICE" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
truncate -s 4G "$WORK/disk.img"
mkfs.ext4 -q "$WORK/disk.img"
DEVICE=$(losetup --direct-io=on --find --show "$WORK/disk.img")
mkdir "$WORK/mnt"
mount "$DEVICE" "$WORK/mnt"
echo data > "$WORK/mnt/f" && sync
median_freeze_ms() {
    local samples=()
    for _ in $(seq "$ROUNDS"); do
        # Apart from the last freeze, as checkpoints are (a freeze just after another
        # finds the grace-period machinery still warm).
        sleep 0.5
        local start end
        start=$(date +%s%N); fsfreeze -f "$WORK/mnt"; end=$(date +%s%N)
        fsfreeze -u "$WORK/mnt"
        samples+=("$(( (end - start) / 1000 ))")
    done
    printf '%s\n' "${samples[@]}" | sort -n | sed -n "$(( (ROUNDS + 1) / 2 ))p" | awk '{printf "%.1f", $1 / 1000}'
}
echo 0 > "$KNOB"; normal=$(median_freeze_ms)
echo 1 > "$KNOB"; expedited=$(median_freeze_ms)
printf 'fsfreeze -f p50 over %s rounds (ms, incl. starting fsfreeze)\n' "$ROUNDS"
printf '  rcu_expedited=0  %8s\n  rcu_expedited=1  %8s\n' "$normal" "$expedited"
