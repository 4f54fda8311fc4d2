#!/usr/bin/env bash
# README command 2: the whole test suite, on a fresh Debian machine.
#
# Installs what is missing, starts a real Kafka-protocol broker and a real
# ClickHouse on loopback (deploy/local/up.sh), then runs formatting and lint
# checks, every unit, integration and end-to-end test, and the doc tests.
# CI (.ci/run) calls exactly this.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
scratch=${XOFLOW_SCRATCH:-$repo/target/xoflow-local}

step() { printf '\n==> %s\n' "$*"; }

step "toolchain"
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked

step "broker and ClickHouse"
"$repo/deploy/local/up.sh"
# shellcheck source=/dev/null
source "$scratch/env"
if [ "${CI:-}" = "true" ]; then
  trap '"$repo/deploy/local/down.sh" >/dev/null 2>&1 || true' EXIT
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "doc tests"
cargo test --workspace --doc --quiet

step "deployment files (compose config, kustomize + kubernetes-validate)"
"$repo/deploy/check.sh"

# Last, so that its summary closes the output.
step "tests (unit, integration, end-to-end) against $XOFLOW_TEST_KAFKA and $XOFLOW_TEST_CLICKHOUSE"
cargo nextest run --workspace --no-fail-fast
