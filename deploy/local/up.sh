#!/usr/bin/env bash
# Installs what is missing and starts a Kafka-protocol broker (Tansu) and a
# ClickHouse server on loopback, with data under a scratch directory; waits
# until both answer; writes the addresses to "$XOFLOW_SCRATCH/env".
#
# Idempotent: a second run reuses running servers and is instant. Used by
# demo.sh, test.sh and CI. Stop them with down.sh.
#
# Settings (environment):
#   XOFLOW_SCRATCH               data, logs, pid files   (<repo>/target/xoflow-local)
#   XOFLOW_CACHE                 where Tansu is built    ($HOME/.cache/xoflow)
#   XOFLOW_KAFKA_PORT            broker port             (19092)
#   XOFLOW_CLICKHOUSE_HTTP_PORT  ClickHouse HTTP port    (18123)
#   XOFLOW_CLICKHOUSE_TCP_PORT   ClickHouse native port  (19000)
#   XOFLOW_CLICKHOUSE_INTERSERVER_PORT                   (19009)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
scratch=${XOFLOW_SCRATCH:-$repo/target/xoflow-local}
cache=${XOFLOW_CACHE:-$HOME/.cache/xoflow}
kafka_port=${XOFLOW_KAFKA_PORT:-19092}
ch_http=${XOFLOW_CLICKHOUSE_HTTP_PORT:-18123}
ch_tcp=${XOFLOW_CLICKHOUSE_TCP_PORT:-19000}
ch_inter=${XOFLOW_CLICKHOUSE_INTERSERVER_PORT:-19009}
tansu_version=0.6.0
tansu=$cache/tansu-$tansu_version/bin/tansu

say() { printf '[up] %s\n' "$*"; }

# --- packages -----------------------------------------------------------------
missing=()
for pkg in clickhouse-server clickhouse-client protobuf-compiler cmake libcurl4-openssl-dev curl; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- the broker ---------------------------------------------------------------
if [ ! -x "$tansu" ]; then
  say "building the Tansu $tansu_version broker into $cache (once per machine; 10-20 min on 2 cores)"
  cargo install tansu --version "$tansu_version" --locked --quiet \
    --features dynostore,libsql --root "$cache/tansu-$tansu_version"
fi

mkdir -p "$scratch/clickhouse/tmp" "$scratch/logs"

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for NAME LOG CHECK...: polls CHECK every 0.2 s for up to 60 s.
wait_for() {
  local name=$1 log=$2; shift 2
  local deadline=$((SECONDS + 60))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      say "$name did not answer within 60 s; last lines of $log:"
      tail -n 30 "$log" >&2 || true
      exit 1
    fi
    sleep 0.2
  done
}

start_tansu() {
  say "starting Tansu on 127.0.0.1:$kafka_port (memory storage)"
  setsid nohup "$tansu" broker \
    --listener-url "tcp://127.0.0.1:$kafka_port" \
    --advertised-listener-url "tcp://127.0.0.1:$kafka_port" \
    --storage-engine memory://tansu/ \
    >"$scratch/logs/tansu.log" 2>&1 </dev/null &
  echo $! >"$scratch/tansu.pid"
}

start_clickhouse() {
  say "starting ClickHouse on 127.0.0.1:$ch_http (HTTP) and :$ch_tcp (native)"
  setsid nohup clickhouse-server --config-file=/etc/clickhouse-server/config.xml -- \
    --path="$scratch/clickhouse/" \
    --tmp_path="$scratch/clickhouse/tmp/" \
    --user_files_path="$scratch/clickhouse/user_files/" \
    --format_schema_path="$scratch/clickhouse/format_schemas/" \
    --http_port="$ch_http" --tcp_port="$ch_tcp" --interserver_http_port="$ch_inter" \
    --listen_host=127.0.0.1 \
    --logger.log="$scratch/logs/clickhouse.log" \
    --logger.errorlog="$scratch/logs/clickhouse.err.log" \
    >"$scratch/logs/clickhouse.out" 2>&1 </dev/null &
  echo $! >"$scratch/clickhouse.pid"
}

ch_ready() { [ "$(curl -sf "http://127.0.0.1:$ch_http/?query=SELECT%201")" = "1" ]; }

if alive "$scratch/tansu.pid" && port_open "$kafka_port"; then
  say "Tansu already running on 127.0.0.1:$kafka_port"
else
  start_tansu
fi
if alive "$scratch/clickhouse.pid" && ch_ready; then
  say "ClickHouse already running on 127.0.0.1:$ch_http"
else
  start_clickhouse
fi
wait_for Tansu "$scratch/logs/tansu.log" port_open "$kafka_port"
wait_for ClickHouse "$scratch/logs/clickhouse.err.log" ch_ready

cat >"$scratch/env" <<ENV
export XOFLOW_KAFKA__BROKERS=127.0.0.1:$kafka_port
export XOFLOW_CLICKHOUSE__URL=http://127.0.0.1:$ch_http
export XOFLOW_TEST_KAFKA=127.0.0.1:$kafka_port
export XOFLOW_TEST_CLICKHOUSE=http://127.0.0.1:$ch_http
export XOFLOW_CLICKHOUSE_TCP_PORT=$ch_tcp
export XOFLOW_TANSU_BIN=$tansu
ENV
say "broker     127.0.0.1:$kafka_port  (Tansu $tansu_version)"
say "clickhouse http://127.0.0.1:$ch_http  ($(curl -sf "http://127.0.0.1:$ch_http/?query=SELECT%20version()"))"
say "addresses written to $scratch/env"
