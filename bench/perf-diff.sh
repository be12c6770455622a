#!/usr/bin/env bash
# What one profile has more of than another, per process name and symbol: samples in
# A, in B, and A minus B, the largest differences first. For the scale bench's
# profiles (`sudo PERF=1 ./bench/scale.sh`), e.g. the full host against the emptied one:
#
#   ./bench/perf-diff.sh target/bench/scale-full.perf target/bench/scale-after.perf
#   TOP=50 ./bench/perf-diff.sh A.perf B.perf
#   SORT=comm ./bench/perf-diff.sh A.perf B.perf   # per process name only
#
# perf records at 4,000 Hz by default: a sample is 0.25 ms of one CPU.
set -euo pipefail
if [ $# -ne 2 ]; then
    echo "usage: $0 A.perf B.perf   (what A has more of than B)" >&2
    exit 2
fi
for f in "$1" "$2"; do
    [ -r "$f" ] || { echo "$f: no such profile (record one with PERF=1 ./bench/scale.sh)" >&2; exit 2; }
done
TOP=${TOP:-30}
SORT=${SORT:-comm,sym}
case "$SORT" in
    comm|comm,sym) ;;
    *) echo "SORT is comm or comm,sym (not $SORT)" >&2; exit 2 ;;
esac
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
counts() {
    # "comm<TAB>symbol<TAB>samples" per line of perf's table (symbol empty by comm).
    perf report -n --no-children --sort "$SORT" -g none -i "$1" --stdio 2>/dev/null |
        awk '/^ +[0-9.]+%/ { n = $2; comm = $3; $1 = $2 = $3 = ""; sub(/^ +/, ""); print comm "\t" $0 "\t" n }'
}
join -t $'\t' -a 1 -a 2 -e 0 -o 0,1.2,2.2 \
    <(counts "$1" | awk -F '\t' '{print $1 " " $2 "\t" $3}' | sort -t $'\t' -k1,1) \
    <(counts "$2" | awk -F '\t' '{print $1 " " $2 "\t" $3}' | sort -t $'\t' -k1,1) |
    awk -F '\t' '{ printf "%d\t%7d %7d %7d  %s\n", $2 - $3, $2, $3, $2 - $3, $1 }' |
    sort -t $'\t' -k1,1 -rn > "$tmp"
printf '%7s %7s %7s  %s\n' A B A-B "process and symbol (A $1, B $2)"
awk -F '\t' '{ split($2, f, " "); a += f[1]; b += f[2] } END { printf "%7d %7d %7d  all samples\n", a, b, a - b }' "$tmp"
head -n "$TOP" "$tmp" | cut -f 2-
