#!/usr/bin/env bash
# One command for every measurement: starts the broker and ClickHouse
# (deploy/local/up.sh), builds release, runs `xoflow bench` (each stage
# against its raw baseline, same run, same servers) in its steady-state
# method, and the criterion micro-benchmarks. Results:
# target/bench/results.{json,md}, results-runs.json and target/criterion/.
#
# Usage: benches/pipeline.sh [EVENTS] [RUNS]   (default 1000000 3)
#
# The defaults are the method BENCHMARKS.md reports: 1M events per
# measurement (rates over the middle 80% of each flow), 60 s at half the
# peak, 5 minutes at twice the peak, the whole table three times (median
# and spread). About 15 minutes a run on two cores; `benches/pipeline.sh
# 100000 1` is a quick look.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
scratch=${XOFLOW_SCRATCH:-$repo/target/xoflow-local}
events=${1:-1000000}
runs=${2:-3}

"$repo/deploy/local/up.sh"
# shellcheck source=/dev/null
source "$scratch/env"
printf '==> machine: %s, %s cores, load %s\n' \
  "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)"
cargo build --release --quiet --bin xoflow
printf '==> xoflow bench (%s events, %s runs)\n' "$events" "$runs"
RUST_LOG=${RUST_LOG:-error} "$repo/target/release/xoflow" bench --events "$events" --runs "$runs" \
  --seconds 60 --overload-seconds 300 --out "$repo/target/bench"
printf '==> criterion micro-benchmarks\n'
cargo bench --quiet --bench ingest_normalise --bench enrich_join --bench sink_rows -- --warm-up-time 1 --measurement-time 3 2>&1 \
  | grep -E '^[a-z_]+/|thrpt:' | grep -v '%\]' || true
