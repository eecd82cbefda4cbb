#!/usr/bin/env bash
# Benchmark: the same load against a qetcd cluster and a Debian etcd cluster running side
# by side on this machine, interleaved: every scenario runs on both in each round, the
# order alternating between rounds, and the ratio qetcd/etcd is printed per round. A
# benchmark, not a test: it prints numbers and never fails on them.
#
#   tests/bench/compare-with-etcd.sh [members] [rounds] [requests per run] [key spaces]
#   e.g. tests/bench/compare-with-etcd.sh 3 3 20000 "100 10000 1000000"
#
# Keys are 32 bytes, values 256 bytes. For each key space (ascending), both clusters are
# first loaded with every key of the space, so puts are updates of existing keys at
# random places in the key space, as Kubernetes' are; "seq put" runs first, on empty
# clusters, and inserts keys in order (the case that flatters any B-tree).
#
# Columns: throughput, p99 latency, and the members' CPU time (all of them, user +
# system) per request: the figure that decides throughput on a saturated machine and is
# the least disturbed by other load on it. After the largest key space, each
# implementation's member 1 is killed with -9 and restarted (time until it is healthy
# again), and each member's resident memory is printed.
#
# Members listen on 127.0.90.x (qetcd) and 127.0.91.x (etcd); data lives in a temporary
# directory that is removed at the end. Set SCENARIOS to run a subset, e.g.
# SCENARIOS="put:64 put:256", and QETCD_BIN to measure another qetcd binary (a copy
# of an earlier build, say) than target/release/qetcd.
set -euo pipefail
cd "$(dirname "$0")/../.."
members=${1:-3}
rounds=${2:-3}
total=${3:-20000}
spaces=${4:-"100 10000 1000000"}
scenarios=${SCENARIOS:-"put:1 put:64 put:256 range:64 range-serializable:64 txn:64"}

cargo build --release -q -p qetcd -p qetcd-tests --bins
load=target/release/etcd-load
work=$(mktemp -d)
declare -A pids
cleanup() { kill -9 ${pids[@]} 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

net_of() { [[ $1 == qetcd ]] && echo 127.0.90 || echo 127.0.91; }
bin_of() { [[ $1 == qetcd ]] && echo "${QETCD_BIN:-target/release/qetcd}" || echo /usr/bin/etcd; }

# shellcheck source=tests/bench/members.sh
source tests/bench/members.sh

member_cmd() { # impl i: starts member i of impl in the background
    start_member "$(bin_of "$1")" "$(net_of "$1")" "$2" "$members" bench "$work"
}

start_cluster() { # impl
    local impl=$1 i p=""
    for ((i = 1; i <= members; i++)); do
        member_cmd "$impl" "$i"
        p+="$! "
    done
    pids[$impl]=$p
    wait_healthy "$(endpoints "$impl")" 300
}

# Restart-to-ready: member 1 killed with -9 and started again on its data; seconds
# until it answers a health check (which needs a leader and its own applied state), in
# $restart_secs. Not run in a subshell: the new process's pid must reach ${pids[..]}.
restart_time() { # impl
    local impl=$1 net first rest t0
    net=$(net_of "$impl")
    read -r first rest <<<"${pids[$impl]}"
    kill -9 "$first"; wait "$first" 2>/dev/null || true
    t0=$(date +%s.%N)
    member_cmd "$impl" 1
    pids[$impl]="$! $rest"
    wait_healthy "http://$net.1:2379" 300
    restart_secs=$(python3 -c "print(f'{$(date +%s.%N) - $t0:.2f}')")
}

endpoints() { local net i out=""; net=$(net_of "$1"); for ((i = 1; i <= members; i++)); do out+="http://$net.$i:2379,"; done; echo "${out%,}"; }

# CPU time (clock ticks) an implementation's members have used so far.
cpu_ticks() { local t=0 p f; for p in ${pids[$1]}; do read -r -a f <"/proc/$p/stat"; t=$((t + f[13] + f[14])); done; echo "$t"; }
hz=$(getconf CLK_TCK)

run() { # impl op clients keys space requests
    "$load" --endpoints "$(endpoints "$1")" --op "$2" --clients "$3" --conns $(($3 < 8 ? $3 : 8)) \
        --total "$6" --value-size 256 --key-size 32 --keys "$4" --key-space "$5"
}

field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

# One measurement of both implementations; prints a table row with the ratios.
measure() { # label round op clients keys space
    local label=$1 round=$2 op=$3 clients=$4 keys=$5 space=$6 impl order n before
    n=$total
    ((clients > 1)) || n=$((total / 10))
    order="qetcd etcd"
    ((round % 2)) || order="etcd qetcd"
    declare -A out cpu
    for impl in $order; do
        # Nothing left in the page cache to write back from the run before (the other
        # implementation's, or the load), whose flushing would otherwise fall on this
        # run's fsyncs.
        sync
        before=$(cpu_ticks "$impl")
        out[$impl]=$(run "$impl" "$op" "$clients" "$keys" "$space" "$n")
        cpu[$impl]=$(python3 -c "print(($(cpu_ticks "$impl") - $before) / $hz / $n * 1e6)")
    done
    local qt et qp ep
    qt=$(field "${out[qetcd]}" throughput); et=$(field "${out[etcd]}" throughput)
    qp=$(field "${out[qetcd]}" p99_ms); ep=$(field "${out[etcd]}" p99_ms)
    if ((clients == 1)); then
        printf '%-28s %5s   p50: qetcd %.2f ms, etcd %.2f ms, one fsync round %.2f ms\n' \
            "$label" "$round" "$(field "${out[qetcd]}" p50_ms)" "$(field "${out[etcd]}" p50_ms)" "$fsync_ms"
    fi
    printf '%-28s %5s %10.0f %10.0f %6.2f %8.2fms %8.2fms %6.2f %7.0fus %7.0fus %6.2f\n' \
        "$label" "$round" "$qt" "$et" "$(python3 -c "print($qt/$et)")" "$qp" "$ep" \
        "$(python3 -c "print($qp/$ep)")" "${cpu[qetcd]}" "${cpu[etcd]}" \
        "$(python3 -c "print(${cpu[qetcd]}/${cpu[etcd]})")"
}

# One durable write round on this disk, the floor of a single client's put: the median
# of 200 appends of 4 KiB, each followed by fdatasync, in the clusters' directory.
fsync_ms=$(python3 - "$work" <<'PY'
import os, statistics, sys, time
path = os.path.join(sys.argv[1], "fsync-probe")
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
times = []
for _ in range(200):
    t = time.perf_counter()
    os.write(fd, b"x" * 4096)
    os.fdatasync(fd)
    times.append((time.perf_counter() - t) * 1000)
os.close(fd)
os.unlink(path)
print(f"{statistics.median(times):.3f}")
PY
)
start_cluster qetcd
start_cluster etcd
echo "one durable write round (4 KiB append + fdatasync, median of 200): $fsync_ms ms"
echo "members: $members, rounds: $rounds, requests per run: $total (c=1: $((total / 10))), $(date -u +%FT%TZ)"
printf '%-28s %5s %10s %10s %6s %10s %10s %6s %9s %9s %6s\n' scenario round "qetcd/s" "etcd/s" ratio \
    "qetcd p99" "etcd p99" ratio "qetcd CPU" "etcd CPU" ratio
for ((r = 1; r <= rounds; r++)); do
    measure "seq put 64 (inserts)" "$r" put 64 sequential 1000000000000
done
loaded=0
for space in $spaces; do
    for impl in qetcd etcd; do
        "$load" --endpoints "$(endpoints "$impl")" --clients 16 --conns 8 --key-space "$space" \
            --value-size 256 --key-size 32 --preload
    done
    loaded=$space
    for ((r = 1; r <= rounds; r++)); do
        for s in $scenarios; do
            measure "${s%%:*} ${s##*:} random/$space" "$r" "${s%%:*}" "${s##*:}" random "$space"
        done
    done
done
for impl in qetcd etcd; do
    restart_time "$impl"
    echo "$impl: restart to ready after kill -9 with $loaded keys: $restart_secs s"
done
for impl in qetcd etcd; do
    for p in ${pids[$impl]}; do
        printf '%s member pid %s: resident %s MiB after %s keys\n' "$impl" "$p" \
            "$(awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$p/status")" "$loaded"
    done
done
