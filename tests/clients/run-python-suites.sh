#!/usr/bin/env bash
# The test suites of two Python etcd client libraries, python-etcd3 0.12 and aetcd, run
# from their PyPI source distributions against a one-member qetcd and against Debian's
# etcd 3.4 side by side. Fails if any test that passes on etcd does not pass on qetcd.
#
# Why network namespaces: both suites have tests that ignore the endpoint variables and
# dial etcd's default, localhost:2379 (python-etcd3's alarm and auth tests, aetcd's
# client fixture), and run `etcdctl` without --endpoints. Each (suite, server) run
# therefore gets a private loopback (`unshare --net`) where the server owns
# 127.0.0.1:2379: no clash with other tests, and etcd and qetcd can run at once.
#
# The suites' code is never edited. They are adapted by environment variables
# (PYTHON_ETCD_HTTP_URL, TEST_ETCD_HTTP_URL, TEST_ETCD_VERSION), by PATH (Debian's
# /usr/bin/etcdctl is the `etcdctl` they run) and by deselecting the tests that need a
# three-member pifpaf cluster (see DESELECT_* below).
#
# Usage: tests/clients/run-python-suites.sh [--qetcd PATH] [--work DIR]
#   --qetcd  the qetcd binary (default: target/debug/qetcd)
#   --work   cache and scratch directory (default: target/python-suites); the venvs
#            and sdists are cached there, keyed by the pinned versions.
# Needs: network to PyPI on the first run, /usr/bin/python3 with venv (python3-venv),
# /usr/bin/etcd (etcd-server), /usr/bin/etcdctl (etcd-client), unshare and ip.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

# ---- Pinned versions: the suites and what they run on. -----------------------------
ETCD3_SDIST="etcd3==0.12.0"
AETCD_SDIST="aetcd==1.0.0"
# python-etcd3 0.12's generated protobuf code predates protobuf 4; its own pins
# (grpcio 1.27, pytest 4.6) do not install on Python 3.11, so these are the nearest
# that do. hypothesis and tenacity stay at the suite's pins: newer hypothesis rejects
# its @given tests (function-scoped fixtures), and etcd3's Lock uses tenacity's old
# wait(attempt, delay) signature, gone in tenacity 8.
ETCD3_DEPS=(grpcio==1.66.2 protobuf==3.20.3 six==1.16.0 tenacity==6.1.0 mock==5.1.0
    hypothesis==4.56.3 pytest==7.4.4 pytest-timeout==2.3.1)
# aetcd's own test pins; protobuf and grpcio at the versions its stubs were made with.
AETCD_DEPS=(grpcio==1.66.2 protobuf==5.27.2 pytest==9.0.3 pytest-asyncio==1.3.0
    pytest-mock==3.15.1 pytest-timeout==2.3.1)

# Tests that cannot run against one member, on etcd or on qetcd.
DESELECT_ETCD3=(
    # SIGSTOP the other two members of a pifpaf cluster (pgrep 'name pifpaf[12]').
    "tests/test_etcd3.py::TestEtcd3::test_get_key_serializable"
    "tests/test_etcd3.py::TestEtcd3::test_get_prefix_serializable"
    # Expects three members named pifpaf*.
    "tests/test_etcd3.py::TestEtcd3::test_member_list"
)
# aetcd skips its cluster tests by itself (no --with-cluster).
DESELECT_AETCD=()

PER_TEST_TIMEOUT=60   # seconds; a hung test fails alone instead of stalling the run
SERVER_START_DEADLINE=60

# ---- The inner run: one suite against one server, inside its own namespace. --------
if [[ ${1:-} == --inner ]]; then
    suite=$2 server=$3 server_bin=$4 venv=$5 sdist=$6 out=$7
    shift 7
    deselect=("$@")
    ip link set lo up
    scratch=$(mktemp -d "$out/scratch.XXXXXX")
    data="$scratch/data"
    url=http://127.0.0.1:2379
    "$server_bin" --name default --data-dir "$data" \
        --listen-client-urls "$url" --advertise-client-urls "$url" \
        --listen-peer-urls http://127.0.0.1:2380 \
        --initial-advertise-peer-urls http://127.0.0.1:2380 \
        --initial-cluster default=http://127.0.0.1:2380 \
        >"$out/$suite-$server.server.log" 2>&1 &
    server_pid=$!
    cleanup() {
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        rm -rf "$scratch"
    }
    trap cleanup EXIT

    deadline=$((SECONDS + SERVER_START_DEADLINE))
    until ETCDCTL_API=3 /usr/bin/etcdctl --endpoints "$url" --command-timeout=2s \
        endpoint health >/dev/null 2>&1; do
        if ! kill -0 "$server_pid" 2>/dev/null || ((SECONDS > deadline)); then
            echo "$server did not become healthy within ${SERVER_START_DEADLINE}s:" >&2
            tail -20 "$out/$suite-$server.server.log" >&2
            exit 3
        fi
        sleep 0.2
    done

    # A fresh copy of the sdist: the suites write caches next to their code.
    mkdir "$scratch/src"
    tar -xzf "$sdist" -C "$scratch/src" --strip-components=1
    src="$scratch/src"
    mkdir "$scratch/bin"
    ln -s /usr/bin/etcdctl "$scratch/bin/etcdctl"
    # python-etcd3's property tests: the same generated keys on both servers.
    # test_user_pwd_auth patches `etcdrpc.AuthStub`, a module importable only with the
    # package directory etcd3/ on sys.path; a directory holding only that name gives it
    # without letting etcd3's other modules (utils, client...) shadow anything.
    suite_args=() python_path=
    if [[ $suite == etcd3 ]]; then
        suite_args=(--hypothesis-seed=0)
        python_path=$scratch/python-path
        mkdir "$python_path"
        ln -s "$src/etcd3/etcdrpc" "$python_path/etcdrpc"
    fi
    args=()
    for d in "${deselect[@]+"${deselect[@]}"}"; do args+=(--deselect "$d"); done
    cd "$src"
    # pytest's exit status is 1 when a test fails; the comparison decides, not it.
    env PATH="$scratch/bin:$venv/bin:/usr/bin:/bin" \
        ETCDCTL_API=3 PYTHON_ETCD_HTTP_URL="$url" TEST_ETCD_HTTP_URL="$url" \
        TEST_ETCD_VERSION=v3.4.23 PYTHONPATH="$python_path" \
        "$venv/bin/python" -m pytest -p no:cacheprovider -o addopts= \
        --timeout "$PER_TEST_TIMEOUT" "${suite_args[@]}" \
        -q -rfE --junitxml "$out/$suite-$server.xml" "${args[@]}" tests \
        >"$out/$suite-$server.pytest.log" 2>&1 || true
    exit 0
fi

# ---- The outer run. -----------------------------------------------------------------
qetcd="$root/target/debug/qetcd"
work="$root/target/python-suites"
while (($#)); do
    case $1 in
    --qetcd) qetcd=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
for f in "$qetcd" /usr/bin/etcd /usr/bin/etcdctl /usr/bin/python3; do
    [[ -x $f ]] || { echo "missing: $f" >&2; exit 2; }
done
mkdir -p "$work"
work=$(cd "$work" && pwd)

# A venv (and the sdist) per suite, cached under a name derived from the pins.
prepare() {
    local sdist_spec=$1
    shift
    local key
    key=$(printf '%s\n' "$sdist_spec" "$@" "$(/usr/bin/python3 --version)" | sha256sum | cut -c1-12)
    local dir="$work/${sdist_spec%%==*}-$key"
    # The ready mark is written last: an interrupted install is redone, not reused.
    if [[ ! -f $dir/ready ]]; then
        # Venvs of earlier pins are of no further use: disk is shared.
        rm -rf "$work/${sdist_spec%%==*}"-*
        mkdir -p "$dir"
        /usr/bin/python3 -m venv "$dir/venv" >&2
        "$dir/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@" >&2
        "$dir/venv/bin/python" -m pip download --quiet --disable-pip-version-check \
            --no-binary :all: --no-deps -d "$dir/sdist" "$sdist_spec" >&2
        touch "$dir/ready"
    fi
    echo "$dir"
}
etcd3_dir=$(prepare "$ETCD3_SDIST" "${ETCD3_DEPS[@]}")
aetcd_dir=$(prepare "$AETCD_SDIST" "${AETCD_DEPS[@]}")

out="$work/results"
rm -rf "$out"
mkdir -p "$out"

# Without root, a user namespace grants the right to make a network namespace.
unshare=(unshare --net)
((EUID == 0)) || unshare=(unshare --user --map-root-user --net)

run() { # suite dir server binary deselect...
    local suite=$1 dir=$2 server=$3 bin=$4
    shift 4
    "${unshare[@]}" "$0" --inner "$suite" "$server" "$bin" "$dir/venv" \
        "$(echo "$dir"/sdist/*.tar.gz)" "$out" "$@"
}

# All four runs at once: the suites mostly wait (on watches, leases, lock TTLs).
start=$SECONDS
runs=()
for server in etcd qetcd; do
    bin=/usr/bin/etcd
    [[ $server == etcd ]] || bin=$qetcd
    run etcd3 "$etcd3_dir" "$server" "$bin" "${DESELECT_ETCD3[@]}" &
    runs+=($!)
    run aetcd "$aetcd_dir" "$server" "$bin" "${DESELECT_AETCD[@]+"${DESELECT_AETCD[@]}"}" &
    runs+=($!)
done
status=0
for pid in "${runs[@]}"; do wait "$pid" || status=$?; done
((status == 0)) || { echo "a run failed before its tests (see $out)" >&2; exit 1; }
echo "== suites ran in $((SECONDS - start))s; results in $out"

/usr/bin/python3 "$here/compare_junit.py" "$out" etcd3 aetcd
