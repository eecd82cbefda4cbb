#!/usr/bin/env bash
# The robustness tier alone: every fault of tests/robustness/tests/faults.rs, one at a
# time, each with a recorded history checked afterwards.
#
# Usage: tests/robustness.sh [--long] [extra cargo test args, e.g. a test name]
#   (default)  the short profile CI runs (through tests/run.sh): >= 2,000 operations
#              per fault.
#   --long     >= 10,000 operations per fault (QETCD_ROBUSTNESS_OPS=10000), each fault
#              held for a fifth of them; about 10 minutes per fault on a busy 2-core
#              machine. Not run in CI. Set QETCD_ROBUSTNESS_OPS yourself for another
#              count, and QETCD_ROBUSTNESS_KEEP=1 to keep every history.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${1:-} == --long ]]; then
    shift
    export QETCD_ROBUSTNESS_OPS=${QETCD_ROBUSTNESS_OPS:-10000}
fi
echo "== robustness: at least ${QETCD_ROBUSTNESS_OPS:-2000} operations per fault"
cargo build -p qetcd --bins
cargo test -p qetcd-robustness --test faults "$@" -- --test-threads=1 --nocapture
