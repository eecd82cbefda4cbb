#!/usr/bin/env bash
# Benchmark with a second, independent load generator: etcdctl's own `check perf` (Go
# client, etcd's code), against a qetcd and an etcd cluster side by side on this
# machine, interleaved (the order alternates between rounds). A benchmark, not a test:
# it prints what `check perf` printed and never fails on it.
#
#   tests/bench/check-perf.sh [members] [rounds] [load]
#   e.g. tests/bench/check-perf.sh 3 2 l
#
# `check perf --load l` drives 500 clients for 60 s at a target of 8,000 puts/s of
# random keys under one prefix values as etcdctl 3.4 defines them, and
# reports the throughput reached, the slowest request and the latency spread (its own
# pass/fail verdict is against that target). Members listen on 127.0.95.x (qetcd) and
# 127.0.96.x (etcd); data lives in a temporary directory removed at the end. Set
# QETCD_BIN to measure another qetcd binary than target/release/qetcd.
set -euo pipefail
cd "$(dirname "$0")/../.."
members=${1:-3}
rounds=${2:-2}
load=${3:-l}

cargo build --release -q -p qetcd
work=$(mktemp -d)
pids=()
cleanup() { kill -9 "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

net_of() { [[ $1 == qetcd ]] && echo 127.0.95 || echo 127.0.96; }
bin_of() { [[ $1 == qetcd ]] && echo "${QETCD_BIN:-target/release/qetcd}" || echo /usr/bin/etcd; }
endpoints() { local net i out=""; net=$(net_of "$1"); for ((i = 1; i <= members; i++)); do out+="http://$net.$i:2379,"; done; echo "${out%,}"; }

# shellcheck source=tests/bench/members.sh
source tests/bench/members.sh

start_cluster() { # impl
    local impl=$1 i
    for ((i = 1; i <= members; i++)); do
        start_member "$(bin_of "$impl")" "$(net_of "$impl")" "$i" "$members" check-perf "$work"
        pids+=($!)
    done
    wait_healthy "$(endpoints "$impl")" 120
}

start_cluster qetcd
start_cluster etcd
echo "members: $members, rounds: $rounds, check perf --load $load, $(date -u +%FT%TZ)"
for ((r = 1; r <= rounds; r++)); do
    order="qetcd etcd"
    ((r % 2)) || order="etcd qetcd"
    for impl in $order; do
        echo "== round $r: $impl"
        ETCDCTL_API=3 etcdctl --endpoints "$(endpoints "$impl")" check perf --load "$load" \
            --auto-compact --auto-defrag 2>&1 | tr '\r' '\n' | grep -aE '^(PASS|FAIL)' || true
    done
done
