#!/usr/bin/env bash
# Builds the session server and the benchmark harness, then runs the benchmark.
#
#   bench/run.sh              release build, full run (3 rounds, 64 connections, 5 s per row)
#   bench/run.sh --smoke      debug build, every row ~1 s with 2 connections (used by CI)
#   bench/run.sh --scale      release build, the at-scale checks (1M sessions; slow)
#
# Any other arguments go to the `bench` binary (see `bench/run.sh --help`); services come from
# BENCH_REDIS_URL, BENCH_POSTGRES_URL and BENCH_PEER_REDIS_URL (see BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir="${CARGO_TARGET_DIR:-target}"
bins=(-p session-server -p bench --bin session-server --bin bench --bin peer --bin bare)

if [[ " $* " == *" --smoke "* ]]; then
  cargo build --quiet "${bins[@]}"
  exec "$target_dir/debug/bench" --server-bin "$target_dir/debug/session-server" "$@"
else
  cargo build --quiet --release "${bins[@]}"
  exec "$target_dir/release/bench" --server-bin "$target_dir/release/session-server" "$@"
fi
