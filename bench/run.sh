#!/usr/bin/env bash
# The benchmark runner (see BENCHMARKS.md): builds the release binaries, starts
# its own PostgreSQL with pgbench data, and prints every comparison as Markdown
# tables (medians of alternating rounds, ratios against the baseline run beside).
#   bash bench/run.sh [all|checkout|select|cache|validation|gateway|loadtest|streams|pools|scaling|health|frontdoor]
# BENCH_SECS (seconds per round, default 3) and BENCH_ROUNDS (default 5) tune it.
# Needs pgbench and pgbouncer: apt-get install -y postgresql-contrib pgbouncer
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in pgbench pgbouncer; do
  command -v "$tool" >/dev/null || {
    echo "missing $tool: apt-get install -y postgresql-contrib pgbouncer" >&2
    exit 1
  }
done
cargo build --release -q -p poolplane-server -p poolplane-tests --bins --examples
BENCH_COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  exec target/release/examples/bench "${1:-all}"
