# shellcheck shell=bash disable=SC2034
# Shared by up.sh and down.sh (sourced, not run): settings, paths and small
# helpers. Every setting can be overridden from the environment.

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
scratch=${XOFLOW_SCRATCH:-$repo/target/xoflow-local}
cache=${XOFLOW_CACHE:-$HOME/.cache/xoflow}
kafka_port=${XOFLOW_KAFKA_PORT:-19092}
ch_http=${XOFLOW_CLICKHOUSE_HTTP_PORT:-18123}
ch_tcp=${XOFLOW_CLICKHOUSE_TCP_PORT:-19000}
ch_inter=${XOFLOW_CLICKHOUSE_INTERSERVER_PORT:-19009}
up_timeout=${XOFLOW_UP_TIMEOUT:-60}
# The broker: nisshi (Tansu's successor, same code base renamed; Apache-2.0),
# built from crates.io. Memory storage for the shared broker; tests that
# restart a broker of their own use its SQLite storage (libsql).
broker_name=nisshi
broker_version=0.8.1
broker_features=dynostore,libsql
broker_root=$cache/nisshi
broker=$broker_root/bin/nisshi
ch_etc=/etc/clickhouse-server
# Where the local ClickHouse keeps its tables: `memory` (a tmpfs directory
# under /dev/shm, linked from $scratch/clickhouse) or `disk`
# ($scratch/clickhouse itself). Why memory by default: deploy/local/README.md,
# "Facts we rely on".
ch_storage=${XOFLOW_CLICKHOUSE_STORAGE:-memory}
ch_memory_dir=/dev/shm/xoflow-clickhouse-$(printf '%s' "$scratch" | sha256sum | cut -c1-12)

# `cargo` from rustup is in ~/.cargo/bin, which a non-login shell may lack.
case ":$PATH:" in *":$HOME/.cargo/bin:"*) ;; *) [ -d "$HOME/.cargo/bin" ] && PATH=$PATH:$HOME/.cargo/bin ;; esac

# pid_of NAME: the pid recorded in $scratch/NAME.pid if that process is alive
# and is still the server we started (guards against a recycled pid);
# otherwise prints nothing and fails.
pid_of() {
  local pidfile=$scratch/$1.pid pid
  [ -f "$pidfile" ] || return 1
  pid=$(cat "$pidfile" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  running "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2" || return 1
  echo "$pid"
}

# The command-line fragment each server's process is recognised by.
broker_sig='nisshi broker'
# The broker of an older up.sh (Tansu 0.6), stopped by down.sh if found.
old_broker_sig='tansu broker'
ch_sig='clickhouse-server'

# running PID: the process exists and is not a zombie (a container's pid 1
# may never reap the servers, which up.sh leaves to it).
running() {
  kill -0 "$1" 2>/dev/null || return 1
  local state
  state=$(sed -E 's/^[0-9]+ \(.*\) (.).*/\1/' "/proc/$1/stat" 2>/dev/null) || return 1
  [ "$state" != Z ]
}

# port_open PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
