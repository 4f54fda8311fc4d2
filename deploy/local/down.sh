#!/usr/bin/env bash
# Stops the broker and ClickHouse started by up.sh: SIGTERM, then SIGKILL if
# one has not exited within XOFLOW_DOWN_TIMEOUT seconds (20). Removes the pid
# files. `--purge` also deletes the scratch directory ($XOFLOW_SCRATCH: data,
# logs, env) and ClickHouse's tables in memory (the tmpfs directory
# $XOFLOW_SCRATCH/clickhouse links to). Only processes recorded in the pid
# files are touched.
set -euo pipefail
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

purge=false
case "${1:-}" in
  --purge) purge=true ;;
  "") ;;
  *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac
down_timeout=${XOFLOW_DOWN_TIMEOUT:-20}

say() { printf '[down] %s\n' "$*"; }

# signal PID SIG: the server runs in its own session (setsid), so signal its
# whole process group; fall back to the process alone.
signal() { kill "-$2" -- "-$1" 2>/dev/null || kill "-$2" "$1" 2>/dev/null || true; }

stop() {
  local name=$1 sig=$2 pid deadline
  if pid=$(pid_of "$name" "$sig"); then
    signal "$pid" TERM
    deadline=$((SECONDS + down_timeout))
    while running "$pid" && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    if running "$pid"; then
      say "$name (pid $pid) ignored SIGTERM for $down_timeout s; killing it"
      signal "$pid" KILL
      while running "$pid"; do sleep 0.1; done
    fi
    say "stopped $name (pid $pid)"
  elif [ -f "$scratch/$name.pid" ]; then
    say "$name was not running (stale pid file)"
  fi
  rm -f "$scratch/$name.pid"
}

if [ -d "$scratch" ]; then
  stop broker "$broker_sig"
  stop tansu "$old_broker_sig"
  stop clickhouse "$ch_sig"
fi
if $purge; then
  if [ -L "$scratch/clickhouse" ]; then
    tables=$(readlink "$scratch/clickhouse")
    rm -rf "$tables"
    say "removed $tables"
  fi
  rm -rf "$scratch"
  say "removed $scratch"
fi
