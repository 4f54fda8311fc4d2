#!/usr/bin/env bash
# README command 1: set everything up on a fresh Debian machine and run the
# demo — a broker and ClickHouse on loopback, the whole pipeline, and what BI
# would see, read back from ClickHouse.
#
# Extra arguments go to `xoflow demo` (see `xoflow demo --help`).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
scratch=${XOFLOW_SCRATCH:-$repo/target/xoflow-local}

printf '==> starting a Kafka-protocol broker and ClickHouse (first run installs and builds them)\n'
"$repo/deploy/local/up.sh"
# shellcheck source=/dev/null
source "$scratch/env"

printf '==> building xoflow (release)\n'
cargo build --release --quiet --bin xoflow

printf '==> running the demo\n'
RUST_LOG=${RUST_LOG:-warn} exec "$repo/target/release/xoflow" demo "$@"
