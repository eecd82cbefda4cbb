#!/bin/sh
# Time from the last member's start to a healthy three-member cluster: static
# bootstrap vs etcd v2 discovery (a qetcd --enable-v2 service) vs v3 discovery (a qetcd
# service), on loopback addresses. Usage: tests/bench/discovery-bootstrap.sh [runs]
# (QETCD_BIN defaults to target/debug/qetcd.)
set -eu
QETCD=${QETCD_BIN:-target/debug/qetcd}
RUNS=${1:-3}
WORK=$(mktemp -d)
PIDS=""
cleanup() { for p in $PIDS; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM

now_ms() { date +%s%3N; }
healthy() { curl -s -m 1 "http://$1:2379/health" | grep -q '"health":"true"'; }
start() { # name ip data extra...
    name=$1; ip=$2; data=$3; shift 3
    "$QETCD" --name "$name" --data-dir "$data" \
        --listen-client-urls "http://$ip:2379" --advertise-client-urls "http://$ip:2379" \
        --listen-peer-urls "http://$ip:2380" --initial-advertise-peer-urls "http://$ip:2380" \
        "$@" >"$data.log" 2>&1 &
    PIDS="$PIDS $!"
}
wait_healthy() { for ip in "$@"; do until healthy "$ip"; do sleep 0.01; done; done; }

# One service for both protocols.
start disc 127.81.0.1 "$WORK/disc" --enable-v2 --initial-cluster disc=http://127.81.0.1:2380
wait_healthy 127.81.0.1
SERVICE=http://127.81.0.1:2379

n=0
for run in $(seq "$RUNS"); do
    for mode in static v2 v3; do
        n=$((n + 1))
        ips="127.81.$n.1 127.81.$n.2 127.81.$n.3"
        cluster="m1=http://127.81.$n.1:2380,m2=http://127.81.$n.2:2380,m3=http://127.81.$n.3:2380"
        tok="bench-$n"
        case $mode in
            static) args="--initial-cluster $cluster --initial-cluster-token $tok" ;;
            v2) curl -s -X PUT "$SERVICE/v2/keys/_etcd/registry/$tok/_config/size" -d value=3 >/dev/null
                args="--discovery $SERVICE/v2/keys/_etcd/registry/$tok" ;;
            v3) curl -s -X PUT "$SERVICE/v2/keys/_etcd/registry/$tok/_config/size" -d value=3 >/dev/null
                args="--discovery-token $tok --discovery-endpoints $SERVICE" ;;
        esac
        before=$PIDS
        i=0
        for ip in $ips; do
            i=$((i + 1))
            # shellcheck disable=SC2086
            start "m$i" "$ip" "$WORK/$n-m$i" $args
        done
        t0=$(now_ms)
        # shellcheck disable=SC2086
        wait_healthy $ips
        t1=$(now_ms)
        echo "run $run $mode: $((t1 - t0)) ms"
        for p in $PIDS; do case " $before " in *" $p "*) ;; *) kill "$p" ;; esac; done
        PIDS=$before
    done
done
