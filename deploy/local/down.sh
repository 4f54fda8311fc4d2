#!/usr/bin/env bash
# Stops the broker and ClickHouse started by up.sh. `--purge` also deletes
# their data.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
scratch=${XOFLOW_SCRATCH:-$repo/target/xoflow-local}

stop() {
  local pidfile=$scratch/$1.pid
  [ -f "$pidfile" ] || return 0
  local pid
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 20))
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    printf '[down] stopped %s (pid %s)\n' "$1" "$pid"
  fi
  rm -f "$pidfile"
}

stop tansu
stop clickhouse
if [ "${1:-}" = "--purge" ]; then
  rm -rf "$scratch"
  printf '[down] removed %s\n' "$scratch"
fi
