#!/usr/bin/env bash
# Diagnostic for the scale goal (docs/STATUS.md, issue 14): how much of a sprite's
# start cost that lives in the kernel's namespaces grows with the number of namespaces
# on the host. Times `unshare` of a user+mount+pid namespace, then with a network
# namespace, then with a sysfs mounted in it (a sprite's /sys), first on an empty host
# and then with HOLDERS sandboxes of that shape alive (each PID 1 of its namespaces,
# holding its netns and sysfs superblock, as a sleeping sprite does). Medians of RUNS.
# Needs root; kills every holder it made, even when interrupted.
#
#   sudo ./bench/ns-growth.sh                # HOLDERS=1000 RUNS=60
set -euo pipefail
HOLDERS=${HOLDERS:-1000}
RUNS=${RUNS:-60}
MARK="sleep 36$RANDOM"   # the holders' command line, unique to this run

cleanup() { pkill -KILL -f "^$MARK\$" 2>/dev/null || true; }
trap cleanup EXIT

median_us() { # command...: the median wall time of RUNS runs, in µs
    local times=()
    for _ in $(seq "$RUNS"); do
        local a b
        a=$(date +%s%N); "$@" >/dev/null 2>&1; b=$(date +%s%N)
        times+=($(((b - a) / 1000)))
    done
    printf '%s\n' "${times[@]}" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'
}

phase() {
    base=$(median_us unshare -U -r -m -p -f true)
    net=$(median_us unshare -U -r -m -p -f -n true)
    sysfs=$(median_us unshare -U -r -m -p -f -n sh -c 'mount -t sysfs sysfs /sys')
    printf '%-28s %8s %8s %8s %8s %8s\n' "$1" "$base" "$net" "$((net - base))" \
        "$sysfs" "$((sysfs - net))"
}

# netns and sysfs: what each step adds (the column before minus the one before it).
printf '%-28s %8s %8s %8s %8s %8s\n' "median µs" "userns" "+netns" "netns" "+sysfs" "sysfs"
phase "empty host"
for _ in $(seq "$HOLDERS"); do
    setsid unshare -U -r -n -m -p -f sh -c "mount -t sysfs sysfs /sys; exec $MARK" \
        </dev/null >/dev/null 2>&1 &
done
for _ in $(seq 120); do
    [ "$(pgrep -xfc "$MARK" || true)" -ge "$HOLDERS" ] && break
    sleep 1
done
phase "$(pgrep -xfc "$MARK" || true) namespaces held"
