#!/usr/bin/env bash
# One command for every measurement: starts the broker and ClickHouse
# (deploy/local/up.sh), builds release, runs `xoflow bench` (each stage
# against its raw baseline, same run, same servers) and the criterion
# micro-benchmarks. Results: target/bench/results.{json,md} and
# target/criterion/.
#
# Usage: benches/pipeline.sh [EVENTS]   (default 100000)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
scratch=${XOFLOW_SCRATCH:-$repo/target/xoflow-local}
events=${1:-100000}

"$repo/deploy/local/up.sh"
# shellcheck source=/dev/null
source "$scratch/env"
printf '==> machine: %s, %s cores, load %s\n' \
  "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)"
cargo build --release --quiet --bin xoflow
printf '==> xoflow bench (%s events)\n' "$events"
RUST_LOG=${RUST_LOG:-error} "$repo/target/release/xoflow" bench --events "$events" --out "$repo/target/bench"
printf '==> criterion micro-benchmarks\n'
cargo bench --quiet --bench ingest_normalise --bench enrich_join --bench sink_rows -- --warm-up-time 1 --measurement-time 3 2>&1 \
  | grep -E '^[a-z_]+/|thrpt:' | grep -v '%\]' || true
