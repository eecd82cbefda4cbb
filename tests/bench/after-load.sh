#!/usr/bin/env bash
# Benchmark: what a single client's puts see in the seconds after a large load, on qetcd
# and on Debian's etcd, in slices of one second or so. A benchmark, not a test: it prints
# numbers and never fails on them.
#
#   tests/bench/after-load.sh [members] [rounds] [key space] [slices] [puts per slice]
#   e.g. tests/bench/after-load.sh 3 2 1000000 15 500
#
# Each round starts a fresh cluster of each implementation in turn (the order
# alternating between rounds), loads every key of the key space into it (random 32-byte
# keys, 256-byte values, 16 clients), and at once runs the slices: puts of existing keys
# by one client through member 1. Per slice: p50, p99 and slowest put, and how many
# MB/s the disk under the data directory wrote meanwhile (/proc/diskstats), which shows
# the write-back a load leaves behind. The cluster is then removed. The page cache is
# synced before each cluster starts, not between the load and the slices: what a load
# leaves to write back is what this measures.
#
# Members listen on 127.0.97.x; data lives in a temporary directory removed at the end.
# QETCD_BIN measures another qetcd binary than target/release/qetcd.
set -euo pipefail
cd "$(dirname "$0")/../.."
members=${1:-3}
rounds=${2:-2}
space=${3:-1000000}
slices=${4:-15}
per_slice=${5:-500}

cargo build --release -q -p qetcd -p qetcd-tests --bins
load=target/release/etcd-load
work=$(mktemp -d)
pids=""
cleanup() { kill -9 $pids 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# shellcheck source=tests/bench/members.sh
source tests/bench/members.sh

net=127.0.97
device=$(basename "$(df --output=source "$work" | tail -1)")
# A data directory on tmpfs (Debian's /tmp may be one) has no disk: its column reads 0.
grep -qw "$device" /proc/diskstats ||
    echo "note: $work is not on a block device ($device); the disk column is 0 and fsyncs cost nothing" >&2
written_sectors() { awk -v d="$device" '$3 == d { n = $10 } END { print n + 0 }' /proc/diskstats; }
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

endpoints() { local i out=""; for ((i = 1; i <= members; i++)); do out+="http://$net.$i:2379,"; done; echo "${out%,}"; }

one_run() { # impl round
    local impl=$1 round=$2 bin i s before t0 out secs
    bin=${QETCD_BIN:-target/release/qetcd}
    [[ $impl == etcd ]] && bin=/usr/bin/etcd
    mkdir -p "$work/$impl-$round"
    # Nothing left in the page cache to write back from before (the build, the other
    # implementation's run), whose flushing would fall on this run's fsyncs.
    sync
    pids=""
    for ((i = 1; i <= members; i++)); do
        start_member "$bin" "$net" "$i" "$members" "after-load-$round" "$work/$impl-$round"
        pids+="$! "
    done
    wait_healthy "$(endpoints)" 300
    t0=$(date +%s.%N)
    "$load" --endpoints "$(endpoints)" --clients 16 --conns 8 --key-space "$space" \
        --value-size 256 --key-size 32 --preload >/dev/null
    printf '%-6s %5s   loaded %d keys in %.1f s\n' "$impl" "$round" "$space" \
        "$(python3 -c "print($(date +%s.%N) - $t0)")"
    for ((s = 1; s <= slices; s++)); do
        before=$(written_sectors)
        t0=$(date +%s.%N)
        out=$("$load" --endpoints "http://$net.1:2379" --op put --clients 1 --conns 1 \
            --total "$per_slice" --value-size 256 --key-size 32 --keys random --key-space "$space")
        secs=$(python3 -c "print($(date +%s.%N) - $t0)")
        printf '%-6s %5s %5s %8.2f %8.2f %8.2f %8.0f\n' "$impl" "$round" "$s" \
            "$(field "$out" p50_ms)" "$(field "$out" p99_ms)" "$(field "$out" max_ms)" \
            "$(python3 -c "print(($(written_sectors) - $before) * 512 / 1e6 / $secs)")"
    done
    kill -9 $pids 2>/dev/null || true
    wait 2>/dev/null || true
    pids=""
    rm -rf "${work:?}/$impl-$round"
}

echo "members: $members, key space: $space, $slices slices of $per_slice puts (1 client), $(date -u +%FT%TZ)"
printf '%-6s %5s %5s %8s %8s %8s %8s\n' impl round slice "p50 ms" "p99 ms" "max ms" "disk MB/s"
for ((r = 1; r <= rounds; r++)); do
    order="qetcd etcd"
    ((r % 2)) || order="etcd qetcd"
    for impl in $order; do one_run "$impl" "$r"; done
done
