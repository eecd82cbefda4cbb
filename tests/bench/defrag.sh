#!/usr/bin/env bash
# Benchmark: `etcdctl defrag` of a large, fragmented key space, qetcd vs Debian's etcd,
# one member each, side by side on this machine. A benchmark, not a test: it prints
# numbers and never fails on them.
#
#   tests/bench/defrag.sh [keys] [value bytes]
#   e.g. tests/bench/defrag.sh 1000000 1024       # ~1 GiB of values
#
# Each member is loaded with every key, then every key is written once more and the
# history compacted, so half the database is free pages; then defragmented. Columns: DB
# SIZE before and after (as `endpoint status` reports it), and the defrag's wall time.
# Set PROFILE=debug to use debug builds. Members listen on 127.0.94.1 (qetcd) and
# 127.0.94.2 (etcd); data lives in a temporary directory removed at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
keys=${1:-200000}
value=${2:-1024}
profile=${PROFILE:-release}

if [[ $profile == release ]]; then
    cargo build --release -q -p qetcd -p qetcd-tests --bins
else
    cargo build -q -p qetcd -p qetcd-tests --bins
fi
load=target/$profile/etcd-load
work=$(mktemp -d)
pids=()
cleanup() { kill -9 "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

ctl() { ETCDCTL_API=3 etcdctl --endpoints "$1" --command-timeout=600s "${@:2}"; }
db_size() { ctl "$1" endpoint status -w json | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['Status']['dbSize'])"; }
revision() { ctl "$1" endpoint status -w json | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['Status']['header']['revision'])"; }

printf '%-6s %8s %12s %12s %9s\n' impl keys db_before db_after defrag_s
for impl in qetcd etcd; do
    if [[ $impl == qetcd ]]; then ip=127.0.94.1; bin=target/$profile/qetcd; else ip=127.0.94.2; bin=/usr/bin/etcd; fi
    url=http://$ip:2379
    "$bin" --name m --data-dir "$work/$impl" --listen-client-urls "$url" --advertise-client-urls "$url" \
        --listen-peer-urls "http://$ip:2380" --initial-advertise-peer-urls "http://$ip:2380" \
        --initial-cluster "m=http://$ip:2380" --quota-backend-bytes 17179869184 >"$work/$impl.log" 2>&1 &
    pids+=($!)
    deadline=$((SECONDS + 120))
    until ctl "$url" endpoint health >/dev/null 2>&1; do
        ((SECONDS < deadline)) || { echo "$impl did not become healthy" >&2; exit 1; }
        sleep 0.05
    done
    for _ in 1 2; do
        "$load" --endpoints "$url" --clients 16 --conns 8 --key-space "$keys" --value-size "$value" \
            --key-size 32 --preload >/dev/null
    done
    ctl "$url" compact "$(revision "$url")" >/dev/null
    before=$(db_size "$url")
    t0=$(date +%s.%N)
    ctl "$url" defrag >/dev/null
    took=$(python3 -c "print(f'{$(date +%s.%N) - $t0:.2f}')")
    printf '%-6s %8s %12s %12s %9s\n' "$impl" "$keys" "$before" "$(db_size "$url")" "$took"
done
