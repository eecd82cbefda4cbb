#!/usr/bin/env bash
# Builds the Debian packages into target/debian/ and prints their paths:
#   qetcd            the daemon, qetcd.service, its sysusers entry, the man page, docs
#   qetcd-provision  the provisioning tool (/usr/bin/qetcd-provision), built because
#                    provision/Cargo.toml carries a [package.metadata.deb] section.
# Usage: packaging/build-debs.sh [cargo-deb arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-deb >/dev/null 2>&1; then
    echo "== installing cargo-deb" >&2
    cargo install cargo-deb --locked --version '^3.8'
fi

# The provisioning tool's package (qetcd-provision): its crate opts in with a
# [package.metadata.deb] section; without one (or without the crate) it is skipped.
packages=(-p qetcd -p qetcd-manpage)
with_provision=false
if [[ -f provision/Cargo.toml ]] && grep -q '^\[package\.metadata\.deb\]' provision/Cargo.toml; then
    with_provision=true
    packages+=(-p provision)
fi

# One release build of everything packaged, and of the man page writer: built apart,
# their dependencies would resolve different features and compile twice.
cargo build --release --locked "${packages[@]}"
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
# qetcd(8) from the daemon's own clap definition.
"$target_dir/release/qetcd-manpage" packaging/build >/dev/null

# --strip: the release profile keeps line tables (80 MB); the package does not need
# them. Extra arguments go to cargo-deb (e.g. --dbgsym for a separate debug package).
debs=()
debs+=("$(cargo deb --quiet --no-build --strip -p qetcd "$@")")

if $with_provision; then
    debs+=("$(cargo deb --quiet --no-build --strip -p provision "$@")")
fi

printf '%s\n' "${debs[@]}"
