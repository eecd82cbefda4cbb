#!/usr/bin/env bash
# Benchmark: `etcdctl snapshot save` of a large key space from a follower, qetcd vs
# Debian's etcd, on clusters running side by side on this machine, and what the save
# does to writes: put latency measured in batches while the save runs, against batches
# before it. A benchmark, not a test: it prints numbers and never fails on them.
#
#   tests/bench/snapshot-save.sh [members] [keys] [value bytes] [puts per batch]
#   e.g. tests/bench/snapshot-save.sh 3 1000000 1024 2000     # ~1 GiB of values
#
# Columns: the snapshot's size, the save's wall time, put p99 (and the batch maximum)
# before the save, and the worst batch p99 while it ran (16 clients, 256-byte values
# over the loaded key space). Set PROFILE=debug to use debug builds (no release build).
#
# Members listen on 127.0.92.x (qetcd) and 127.0.93.x (etcd); data lives in a temporary
# directory that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
members=${1:-3}
keys=${2:-100000}
value=${3:-1024}
batch=${4:-2000}
profile=${PROFILE:-release}

if [[ $profile == release ]]; then
    cargo build --release -q -p qetcd -p qetcd-tests --bins
else
    cargo build -q -p qetcd -p qetcd-tests --bins
fi
load=target/$profile/etcd-load
work=$(mktemp -d)
declare -A pids
cleanup() { kill -9 ${pids[@]} 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

net_of() { [[ $1 == qetcd ]] && echo 127.0.92 || echo 127.0.93; }
bin_of() { [[ $1 == qetcd ]] && echo "target/$profile/qetcd" || echo /usr/bin/etcd; }
endpoints() { local net i out=""; net=$(net_of "$1"); for ((i = 1; i <= members; i++)); do out+="http://$net.$i:2379,"; done; echo "${out%,}"; }

# shellcheck source=tests/bench/members.sh
source tests/bench/members.sh

start_cluster() { # impl
    local impl=$1 i p=""
    for ((i = 1; i <= members; i++)); do
        start_member "$(bin_of "$impl")" "$(net_of "$impl")" "$i" "$members" bench-snapshot "$work"
        p+="$! "
    done
    pids[$impl]=$p
    wait_healthy "$(endpoints "$impl")" 120
}

# A member that is not the leader: where operators take backups from.
follower() { # impl
    local impl=$1 net i
    net=$(net_of "$impl")
    for ((i = 1; i <= members; i++)); do
        if ETCDCTL_API=3 etcdctl --endpoints "http://$net.$i:2379" endpoint status -w json |
            python3 -c "import json,sys; s=json.load(sys.stdin)[0]['Status']; sys.exit(0 if s['leader'] != s['header']['member_id'] or $members == 1 else 1)"; then
            echo "http://$net.$i:2379"
            return
        fi
    done
}

puts() { # impl: one batch of puts, JSON line
    "$load" --endpoints "$(endpoints "$1")" --op put --clients 16 --conns 8 \
        --total "$batch" --value-size 256 --key-size 32 --key-space "$keys"
}

field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

printf '%-6s %8s %10s %9s %12s %12s %16s\n' impl keys snapshot save_s p99_before max_before worst_p99_during
for impl in qetcd etcd; do
    start_cluster "$impl"
    "$load" --endpoints "$(endpoints "$impl")" --op put --clients 16 --conns 8 --total 1 \
        --value-size "$value" --key-size 32 --key-space "$keys" --preload >/dev/null
    before=$(puts "$impl")
    from=$(follower "$impl")
    rm -f "$work/saving"
    touch "$work/saving"
    (
        while [[ -e $work/saving ]]; do puts "$impl"; done >"$work/$impl-during.jsonl"
    ) &
    loader=$!
    t0=$(date +%s.%N)
    ETCDCTL_API=3 etcdctl --endpoints "$from" snapshot save "$work/$impl.db" >/dev/null 2>&1
    t1=$(date +%s.%N)
    rm -f "$work/saving"
    wait "$loader"
    worst=$(python3 -c "import json,sys; print(max(json.loads(l)['p99_ms'] for l in open(sys.argv[1]) if l.strip()))" "$work/$impl-during.jsonl")
    printf '%-6s %8s %9.0fM %9.2f %10.2fms %10.2fms %14.2fms\n' "$impl" "$keys" \
        "$(python3 -c "import os; print(os.path.getsize('$work/$impl.db') / 1e6)")" \
        "$(python3 -c "print($t1 - $t0)")" "$(field "$before" p99_ms)" "$(field "$before" max_ms)" "$worst"
    kill -9 ${pids[$impl]} 2>/dev/null || true
    wait ${pids[$impl]} 2>/dev/null || true
    unset "pids[$impl]"
    rm -rf "$work"/"$(net_of "$impl")"-*
done
