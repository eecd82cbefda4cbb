#!/usr/bin/env bash
# Watch figures, qetcd beside Debian's etcd on this machine (one member each, one after
# the other): event delivery latency with 100 watchers, and the memory of 10,000 idle
# watches.
#
#   tests/bench/watch-figures.sh [watchers] [puts] [idle watches]
set -euo pipefail
cd "$(dirname "$0")/../.."
watchers=${1:-100}
puts=${2:-1000}
idle=${3:-10000}

cargo build --release -q -p qetcd -p qetcd-tests --bins
work=$(mktemp -d)
pid=
cleanup() { [[ -n $pid ]] && kill -9 "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

for impl in qetcd etcd; do
    bin=target/release/qetcd; ip=127.0.92.1
    [[ $impl == etcd ]] && { bin=/usr/bin/etcd; ip=127.0.93.1; }
    "$bin" --name w --data-dir "$work/$impl" \
        --listen-client-urls "http://$ip:2379" --advertise-client-urls "http://$ip:2379" \
        --listen-peer-urls "http://$ip:2380" --initial-advertise-peer-urls "http://$ip:2380" \
        --initial-cluster "w=http://$ip:2380" >"$work/$impl.log" 2>&1 &
    pid=$!
    deadline=$((SECONDS + 30))
    until ETCDCTL_API=3 etcdctl --endpoints "http://$ip:2379" endpoint health >/dev/null 2>&1; do
        ((SECONDS < deadline)) || { echo "$impl did not start" >&2; exit 1; }
        sleep 0.2
    done
    echo "$impl latency: $(target/release/watch-bench --endpoint "http://$ip:2379" latency --watchers "$watchers" --puts "$puts")"
    echo "$impl idle:    $(target/release/watch-bench --endpoint "http://$ip:2379" idle --pid "$pid" --watches "$idle")"
    kill -9 "$pid"; wait "$pid" 2>/dev/null || true; pid=
done
