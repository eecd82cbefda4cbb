#!/usr/bin/env bash
# The whole test suite: installs what the tests need, then lints and tests every crate.
# Usage: tests/run.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests drive: etcdctl (the client under test), Debian's etcd (the
# behavioural reference), protoc and the well-known .proto files (the etcd-client
# crate's build needs both), openssl (reads the certificates provision renders; makes and signs
# with the JWT tests' keys),
# debootstrap and systemd-container (the systemd test boots the .deb in containers;
# installing systemd-container also upgrades the host's systemd packages to match),
# dnsmasq-base (the DNS server of the SRV discovery tests), curl (the discovery tests
# make tokens as an operator would: curl -X PUT .../_config/size -d value=3; the gateway
# test sends its JSON with it, the JWT test its tokens), postgresql and patroni (Patroni's etcd3 mode keeps
# PostgreSQL highly available on qetcd through the v3 HTTP/JSON gateway), python3-tooz
# and python3-etcd3gw (tooz's etcd3+http driver: locks and groups over the gateway),
# sqlite3 (the damaged-database test folds a stopped member's WALs into its files),
# python3-venv (the suites of python-etcd3 and aetcd run in venvs under target/ that
# tests/clients/run-python-suites.sh fills from PyPI).
packages=(etcd-client etcd-server protobuf-compiler libprotobuf-dev openssl debootstrap systemd-container dnsmasq-base curl postgresql patroni python3-tooz python3-etcd3gw sqlite3 python3-venv)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "== installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # etcd-server's postinst tries to start etcd through systemd; there may be no systemd.
    # An unpack has been seen to fail on a busy machine: repair and retry once.
    install=(apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}")
    "${install[@]}" >/dev/null || {
        apt-get -o DPkg::Lock::Timeout=600 --fix-broken install -y -qq >/dev/null
        "${install[@]}" >/dev/null
    }
fi
export CARGO_INCREMENTAL=0
export CARGO_TERM_COLOR=never

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo build (the binaries the process-level tests run)"
cargo build --workspace --bins
if [[ ${QETCD_SKIP_SYSTEMD:-} != 1 ]]; then
    # A release build, only because the systemd test installs the real .deb.
    echo "== packaging/build-debs.sh (the .deb the systemd test installs)"
    packaging/build-debs.sh
fi
echo "== cargo test"
cargo test --workspace "$@"
