#!/usr/bin/env bash
# The soak (not in CI): builds the release binaries, then runs the server under
# steady load with a pool created and deleted every second for SECONDS (default
# 600), sampling RSS, file descriptors and runtime tasks. Exits 1 if RSS or
# descriptors end more than 10% above their value after the one-minute warm-up.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p poolplane-server -p poolplane-tests --bins --examples
exec target/release/examples/soak "${1:-600}"
