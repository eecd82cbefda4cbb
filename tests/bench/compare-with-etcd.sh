#!/usr/bin/env bash
# Benchmark: the same load against a qetcd cluster and a Debian etcd cluster on this
# machine, one after the other, and the ratio qetcd/etcd for each figure.
#
#   tests/bench/compare-with-etcd.sh [members] [total requests per run]
#
# Members listen on 127.0.90.x (qetcd) and 127.0.91.x (etcd); data lives in a
# temporary directory that is removed at the end. A benchmark, not a test: it prints
# numbers and never fails on them. "CPU" is the members' CPU time (all of them,
# user + system) per request: the figure that decides throughput on a saturated
# machine, and the least disturbed by other load on it.
set -euo pipefail
cd "$(dirname "$0")/../.."
members=${1:-3}
total=${2:-20000}

cargo build --release -q -p qetcd -p qetcd-tests --bins
load=target/release/etcd-load
work=$(mktemp -d)
pids=()
cleanup() { kill -9 "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

start_cluster() { # binary net
    local bin=$1 net=$2 cluster="" i
    for ((i = 1; i <= members; i++)); do cluster+="m$i=http://$net.$i:2380,"; done
    for ((i = 1; i <= members; i++)); do
        "$bin" --name "m$i" --data-dir "$work/$net-$i" \
            --listen-client-urls "http://$net.$i:2379" --advertise-client-urls "http://$net.$i:2379" \
            --listen-peer-urls "http://$net.$i:2380" --initial-advertise-peer-urls "http://$net.$i:2380" \
            --initial-cluster "${cluster%,}" --initial-cluster-token bench \
            >"$work/$net-$i.log" 2>&1 &
        pids+=($!)
    done
    local deadline=$((SECONDS + 60))
    until ETCDCTL_API=3 etcdctl --endpoints "http://$net.1:2379" endpoint health >/dev/null 2>&1; do
        ((SECONDS < deadline)) || { echo "cluster on $net did not become healthy" >&2; exit 1; }
        sleep 0.2
    done
}

# CPU time (clock ticks) the members have used so far: the machine has two cores, so
# server CPU per request is what decides throughput once it is saturated.
cpu_ticks() { local t=0 p f; for p in "${pids[@]}"; do read -r -a f <"/proc/$p/stat"; t=$((t + f[13] + f[14])); done; echo "$t"; }
hz=$(getconf CLK_TCK)

endpoints() { local net=$1 i out=""; for ((i = 1; i <= members; i++)); do out+="http://$net.$i:2379,"; done; echo "${out%,}"; }

run() { # net op clients
    "$load" --endpoints "$(endpoints "$1")" --op "$2" --clients "$3" --conns $(( $3 < 16 ? $3 : 16 )) \
        --total "$total" --value-size 256 --key-space 100000
}

declare -A results cpu
scenarios=("put 1" "put 64" "put 256" "range 64" "range-serializable 64" "txn 64")
for impl in qetcd etcd; do
    if [[ $impl == qetcd ]]; then start_cluster target/release/qetcd 127.0.90; net=127.0.90
    else start_cluster /usr/bin/etcd 127.0.91; net=127.0.91; fi
    for s in "${scenarios[@]}"; do
        read -r op clients <<<"$s"
        before=$(cpu_ticks)
        results["$impl $s"]=$(run "$net" "$op" "$clients")
        cpu["$impl $s"]=$(python3 -c "print(($(cpu_ticks) - $before) / $hz / $total * 1e6)")
    done
    kill -9 "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; pids=()
done

field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
printf '%-24s %12s %12s %7s %10s %10s %7s %10s %10s %7s\n' "scenario ($members members)" "qetcd req/s" "etcd req/s" "ratio" \
    "qetcd p99" "etcd p99" "ratio" "qetcd CPU" "etcd CPU" "ratio"
for s in "${scenarios[@]}"; do
    q=${results["qetcd $s"]}; e=${results["etcd $s"]}
    qt=$(field "$q" throughput); et=$(field "$e" throughput)
    qp=$(field "$q" p99_ms); ep=$(field "$e" p99_ms)
    qc=${cpu["qetcd $s"]}; ec=${cpu["etcd $s"]}
    printf '%-24s %12.0f %12.0f %7.2f %8.2fms %8.2fms %7.2f %8.0fus %8.0fus %7.2f\n' "$s clients" "$qt" "$et" \
        "$(python3 -c "print($qt/$et)")" "$qp" "$ep" "$(python3 -c "print($qp/$ep)")" \
        "$qc" "$ec" "$(python3 -c "print($qc/$ec)")"
done
