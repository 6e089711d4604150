#!/usr/bin/env bash
# The query data of sqlx's compile-time checked queries (`sqlx::query!` and friends): every
# query is described by a PostgreSQL with this checkout's migrations, and the descriptions are
# written to `.sqlx/` (committed: builds read them offline, .cargo/config.toml). What
# `cargo sqlx prepare` does, without installing sqlx-cli.
#
#   scripts/sqlx-prepare.sh          rewrite .sqlx/ (after changing a query or a migration)
#   scripts/sqlx-prepare.sh --check  fail when .sqlx/ is not what this checkout's queries and
#                                    migrations give (.ci/run)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_protoc
unset DATABASE_URL
RECREATE_DATABASE=1 ensure_database chatkpi_sqlx
URL=postgres://postgres:postgres@127.0.0.1:5432/chatkpi_sqlx
for migration in migrations/*.sql; do
  psql -q -v ON_ERROR_STOP=1 -1 -d "$URL" -f "$migration" >/dev/null
done
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"; psql -q -d postgres://postgres:postgres@127.0.0.1:5432/postgres -c "drop database if exists chatkpi_sqlx with (force)" >/dev/null 2>&1 || true' EXIT
# Touching the crate makes cargo expand every macro again (it does not track the variables
# the macros read).
touch src/lib.rs
SQLX_OFFLINE=false SQLX_OFFLINE_DIR="$OUT" DATABASE_URL="$URL" \
  cargo check --locked --workspace --all-targets --quiet
touch src/lib.rs
if [ "${1:-}" = "--check" ]; then
  if ! diff -r "$OUT" .sqlx >/dev/null 2>&1 && ! { [ -z "$(ls -A "$OUT")" ] && [ ! -d .sqlx ]; }; then
    diff -r "$OUT" .sqlx || true
    log ".sqlx/ is not current: run scripts/sqlx-prepare.sh and commit .sqlx/"
    exit 1
  fi
  log ".sqlx/ is current ($(ls "$OUT" | wc -l) queries)"
else
  rm -rf .sqlx
  mkdir -p .sqlx
  cp "$OUT"/*.json .sqlx/ 2>/dev/null || true
  log "wrote $(ls .sqlx | wc -l) query descriptions to .sqlx/"
fi
