#!/usr/bin/env bash
# QueryService point select through the SDK vs pgbench -S -M simple through
# PgBouncer, side by side (see BENCHMARKS.md). Needs pgbench and pgbouncer:
#   apt-get install -y postgresql-contrib pgbouncer
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in pgbench pgbouncer; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y pgbouncer postgresql-contrib" >&2; exit 1; }
done
cargo build --release -q -p poolplane-server -p poolplane-tests --bins --examples
exec target/release/examples/query_bench "${1:-8}" "${2:-3}"
