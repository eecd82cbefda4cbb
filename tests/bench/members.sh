# Sourced by the bench scripts that run a qetcd and an etcd cluster side by side: how a
# member of either is started, with the same flags for both, and waited for.

# start_member BIN NET I MEMBERS TOKEN WORK — starts member I of a MEMBERS-member static
# cluster whose members listen on NET.1, NET.2, …; in the background ($! is its pid),
# data in WORK/NET-I, output appended to WORK/NET-I.log.
start_member() {
    local bin=$1 net=$2 i=$3 n=$4 token=$5 work=$6 cluster="" j
    for ((j = 1; j <= n; j++)); do cluster+="m$j=http://$net.$j:2380,"; done
    "$bin" --name "m$i" --data-dir "$work/$net-$i" \
        --listen-client-urls "http://$net.$i:2379" --advertise-client-urls "http://$net.$i:2379" \
        --listen-peer-urls "http://$net.$i:2380" --initial-advertise-peer-urls "http://$net.$i:2380" \
        --initial-cluster "${cluster%,}" --initial-cluster-token "$token" \
        --quota-backend-bytes 8589934592 >>"$work/$net-$i.log" 2>&1 &
}

# wait_healthy ENDPOINTS SECONDS — until etcdctl finds every endpoint healthy; exits the
# script if that takes longer than SECONDS.
wait_healthy() {
    local deadline=$((SECONDS + $2))
    until ETCDCTL_API=3 etcdctl --endpoints "$1" endpoint health >/dev/null 2>&1; do
        ((SECONDS < deadline)) || { echo "$1 did not become healthy" >&2; exit 1; }
        sleep 0.05
    done
}
