#!/usr/bin/env bash
# Installs what is missing and starts a Kafka-protocol broker (nisshi) and a
# ClickHouse server on loopback, with their data under a scratch directory;
# waits until both answer; writes their addresses to "$XOFLOW_SCRATCH/env".
#
# Idempotent: a second run reuses the running servers and takes well under a
# second. Used by demo.sh, test.sh and CI; other scripts run it and then
# `source "$XOFLOW_SCRATCH/env"`. Stop the servers with down.sh.
#
# Settings (environment, all optional):
#   XOFLOW_SCRATCH                      data, logs, pid files, env  (<repo>/target/xoflow-local)
#   XOFLOW_CACHE                        where the broker is built    ($HOME/.cache/xoflow)
#   XOFLOW_KAFKA_PORT                   broker                       (19092)
#   XOFLOW_CLICKHOUSE_HTTP_PORT         ClickHouse HTTP              (18123)
#   XOFLOW_CLICKHOUSE_TCP_PORT          ClickHouse native            (19000)
#   XOFLOW_CLICKHOUSE_INTERSERVER_PORT  ClickHouse interserver       (19009)
#   XOFLOW_CLICKHOUSE_STORAGE           memory (tmpfs) or disk       (memory)
#   XOFLOW_UP_TIMEOUT                   seconds to wait per server   (60)
set -euo pipefail
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

say() { printf '[up] %s\n' "$*"; }
die() { printf '[up] error: %s\n' "$*" >&2; exit 1; }

# --- packages -----------------------------------------------------------------
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }
missing=()
# chromium, chromium-driver and a CJK font: the console's browser test
# (tests/console_browser.rs); docker-compose: deploy/check.sh.
for pkg in clickhouse-server clickhouse-client protobuf-compiler cmake libcurl4-openssl-dev curl python3-venv \
  chromium chromium-driver fonts-wqy-microhei docker-compose; do
  installed "$pkg" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- the broker binary ----------------------------------------------------------
broker_ok() {
  [ -x "$broker" ] && "$broker" --version 2>/dev/null | grep -qx "$broker_name $broker_version"
}
if ! broker_ok; then
  command -v cargo >/dev/null || die "cargo is needed to build the broker (install Rust with rustup)"
  mkdir -p "$cache"
  # One build at a time per cache, even when several up.sh run at once.
  exec 8>"$cache/broker.build.lock"
  flock -w 3600 8 || die "another up.sh has been building the broker for an hour ($cache/broker.build.lock)"
  if ! broker_ok; then
    say "building the $broker_name $broker_version broker into $broker_root"
    say "  (once per machine; takes 12-17 min on 2 cores; log: $cache/broker-build.log)"
    started=$SECONDS
    # Its locked dependency set declares rustc 1.96; it builds and runs on
    # 1.95 (--ignore-rust-version). Only the storage engines used here.
    if ! cargo install "$broker_name" --version "$broker_version" --locked --ignore-rust-version \
      --no-default-features --features "$broker_features" --root "$broker_root" \
      >"$cache/broker-build.log" 2>&1; then
      tail -n 30 "$cache/broker-build.log" >&2
      die "building the broker failed (full log: $cache/broker-build.log)"
    fi
    say "  built in $((SECONDS - started)) s"
  fi
  exec 8>&-
fi

# --- where ClickHouse keeps its tables -------------------------------------------
# memory: $scratch/clickhouse links to a tmpfs directory of this scratch
# dir's own (recreated after a reboot emptied /dev/shm); disk: it is a
# directory. A scratch dir already holding tables in the other place keeps
# them there, and says so: nothing is moved or deleted here.
place_clickhouse() {
  local d=$scratch/clickhouse
  case "$ch_storage" in
    memory)
      if [ -d "$d" ] && [ ! -L "$d" ]; then
        say "ClickHouse keeps its tables on disk in $d, as an earlier up.sh left them (down.sh --purge, then up.sh, to keep them in memory)"
        return
      fi
      if [ ! -L "$d" ]; then
        local room
        room=$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 { print $4 }')
        if [ "$(stat -f -c %T /dev/shm 2>/dev/null)" != tmpfs ] || [ "${room:-0}" -lt 2097152 ]; then
          say "/dev/shm is not a tmpfs with 2 GiB free: ClickHouse keeps its tables on disk in $d"
          return
        fi
        ln -s "$ch_memory_dir" "$d"
      fi
      mkdir -p "$(readlink "$d")"
      ;;
    disk)
      if [ -L "$d" ]; then
        die "ClickHouse keeps its tables in memory ($d links to $(readlink "$d")); run deploy/local/down.sh --purge first to keep them on disk"
      fi
      ;;
    *) die "XOFLOW_CLICKHOUSE_STORAGE must be memory or disk, not '$ch_storage'" ;;
  esac
}

# --- start (or reuse) the servers -----------------------------------------------
mkdir -p "$scratch/logs"
# One up.sh at a time per scratch directory. The servers must not inherit
# the lock's descriptors (8, 9), or they would hold the lock for ever.
exec 9>"$scratch/up.lock"
flock -w $((up_timeout * 3)) 9 || die "another up.sh holds $scratch/up.lock"
place_clickhouse
mkdir -p "$scratch/clickhouse/tmp"

broker_log=$scratch/logs/broker.log
ch_log=$scratch/logs/clickhouse.err.log

broker_ready() {
  port_open "$kafka_port" &&
    timeout 5 "$broker" topic list --broker "tcp://127.0.0.1:$kafka_port" >/dev/null 2>&1
}
ch_ready() {
  [ "$(curl -sf --max-time 2 "http://127.0.0.1:$ch_http/ping")" = "Ok." ] &&
    [ "$(curl -sf --max-time 2 --data-binary 'SELECT 1' "http://127.0.0.1:$ch_http/")" = "1" ]
}

# ensure_free NAME PORT...: fail clearly if another process holds a port.
ensure_free() {
  local name=$1 port; shift
  for port in "$@"; do
    if port_open "$port"; then
      ss -ltnp "sport = :$port" 2>/dev/null | tail -n +2 >&2 || true
      die "port $port, needed by $name, is taken by another process (set XOFLOW_*_PORT, or run down.sh if it is an older up.sh's server)"
    fi
  done
}

# check_same NAME PID WANT: a running server of ours was started with other
# settings (ports or scratch dir) than this run asks for.
check_same() {
  tr '\0' ' ' <"/proc/$2/cmdline" | grep -qF -- "$3" ||
    die "$1 (pid $2) runs with other settings than asked for; run deploy/local/down.sh first"
}

start_broker() {
  ensure_free "the broker" "$kafka_port"
  say "starting $broker_name on 127.0.0.1:$kafka_port (memory storage)"
  # The broker also reads its settings from the environment (CLUSTER_ID,
  # STORAGE_ENGINE, OTEL_EXPORTER_OTLP_ENDPOINT, ...): give it a clean one.
  # A new group's first rebalance does not wait for more members (Kafka's
  # group.initial.rebalance.delay.ms, 3 s by default): tests start their
  # members together or one at a time, and each would wait 3 s.
  env -u CLUSTER_ID -u LISTENER_URL -u ADVERTISED_LISTENER_URL -u STORAGE_ENGINE \
    -u SCHEMA_REGISTRY -u OTEL_EXPORTER_OTLP_ENDPOINT -u GROUP_INITIAL_REBALANCE_DELAY \
    -u GROUP_POLL_INTERVAL RUST_LOG=warn \
    setsid nohup "$broker" broker \
    --listener-url "tcp://127.0.0.1:$kafka_port" \
    --advertised-listener-url "tcp://127.0.0.1:$kafka_port" \
    --storage-engine memory://xoflow/ \
    --group-initial-rebalance-delay 0s \
    >"$broker_log" 2>&1 </dev/null 8>&- 9>&- &
  echo $! >"$scratch/broker.pid"
}

start_clickhouse() {
  ensure_free ClickHouse "$ch_http" "$ch_tcp" "$ch_inter"
  local d=$scratch/clickhouse where="on disk"
  [ -L "$d" ] && where="in memory ($(readlink "$d"))"
  say "starting ClickHouse on 127.0.0.1:$ch_http (HTTP), :$ch_tcp (native), tables $where"
  # A copy of the packaged config (with users.xml beside it) whose paths point
  # into the scratch dir: the server writes its preprocessed config under the
  # config file's own <path> before command-line overrides apply, so with
  # /etc's file it would write to /var/lib/clickhouse. Nothing under /etc is
  # edited. Settings after `--` override the file.
  rm -rf "${d:?}/etc"
  mkdir -p "$d/etc"
  cp -r "$ch_etc/." "$d/etc/"
  sed -i -e "s|/var/lib/clickhouse/|$d/|g" -e "s|/var/log/clickhouse-server/|$scratch/logs/|g" \
    "$d/etc/config.xml"
  setsid nohup clickhouse-server --config-file="$d/etc/config.xml" -- \
    --path="$d/" \
    --tmp_path="$d/tmp/" \
    --user_files_path="$d/user_files/" \
    --format_schema_path="$d/format_schemas/" \
    --listen_host=127.0.0.1 \
    --http_port="$ch_http" --tcp_port="$ch_tcp" --interserver_http_port="$ch_inter" \
    --logger.log="$scratch/logs/clickhouse.log" \
    --logger.errorlog="$ch_log" \
    >"$scratch/logs/clickhouse.out" 2>&1 </dev/null 8>&- 9>&- &
  echo $! >"$scratch/clickhouse.pid"
}

# Servers this run started, stopped again if the other one cannot start,
# so a failed start leaves nothing behind holding its port.
started=()
stop_started() {
  local name pid
  for name in "${started[@]}"; do
    if pid=$(cat "$scratch/$name.pid" 2>/dev/null); then
      kill "$pid" 2>/dev/null || true
      rm -f "$scratch/$name.pid"
    fi
  done
}
trap '[ $? -eq 0 ] || stop_started' EXIT

# wait_for NAME LOG CHECK: polls CHECK every 0.2 s until the deadline; on
# timeout prints the end of LOG and fails.
wait_for() {
  local name=$1 log=$2 check=$3 deadline=$((SECONDS + up_timeout)) pidname=$4 sig=$5
  until $check; do
    if ! pid_of "$pidname" "$sig" >/dev/null; then
      say "$name exited during start-up; last lines of $log:" >&2
      tail -n 30 "$log" >&2 || true
      exit 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      say "$name did not answer within $up_timeout s; last lines of $log:" >&2
      tail -n 30 "$log" >&2 || true
      exit 1
    fi
    sleep 0.2
  done
}

t0=${EPOCHREALTIME//[!0-9]/}
if pid=$(pid_of tansu "$old_broker_sig"); then
  die "an older up.sh's Tansu broker runs (pid $pid); run deploy/local/down.sh first"
fi
if pid=$(pid_of broker "$broker_sig"); then
  check_same "the broker" "$pid" "--listener-url tcp://127.0.0.1:$kafka_port "
  say "$broker_name already running (pid $pid)"
else
  rm -f "$scratch/broker.pid"
  start_broker
  started+=(broker)
fi
if pid=$(pid_of clickhouse "$ch_sig"); then
  check_same ClickHouse "$pid" "--path=$scratch/clickhouse/ "
  check_same ClickHouse "$pid" "--http_port=$ch_http "
  say "ClickHouse already running (pid $pid)"
else
  rm -f "$scratch/clickhouse.pid"
  start_clickhouse
  started+=(clickhouse)
fi
wait_for "$broker_name" "$broker_log" broker_ready broker "$broker_sig"
wait_for ClickHouse "$ch_log" ch_ready clickhouse "$ch_sig"
ms=$(((${EPOCHREALTIME//[!0-9]/} - t0) / 1000))
elapsed=$((ms / 1000)).$(((ms % 1000) / 100))

tmp=$(mktemp "$scratch/env.XXXXXX")
cat >"$tmp" <<ENV
export XOFLOW_KAFKA__BROKERS=127.0.0.1:$kafka_port
export XOFLOW_CLICKHOUSE__URL=http://127.0.0.1:$ch_http
export XOFLOW_TEST_KAFKA=127.0.0.1:$kafka_port
export XOFLOW_TEST_CLICKHOUSE=http://127.0.0.1:$ch_http
export XOFLOW_CLICKHOUSE_TCP_PORT=$ch_tcp
export XOFLOW_BROKER_BIN=$broker
export XOFLOW_SCRATCH=$scratch
ENV
mv -f "$tmp" "$scratch/env"

ch_version=$(curl -sf --max-time 2 --data-binary 'SELECT version()' "http://127.0.0.1:$ch_http/")
say "broker     127.0.0.1:$kafka_port ($broker_name $broker_version)   clickhouse http://127.0.0.1:$ch_http, native :$ch_tcp ($ch_version)   ready in ${elapsed}s"
say "addresses in $scratch/env (source it); logs in $scratch/logs; stop with deploy/local/down.sh"
