#!/usr/bin/env bash
# Runs chatkpi (release build). Without arguments: `serve` on 127.0.0.1:50051.
# Any arguments are passed to the binary: scripts/run.sh tenant create --name acme
# Installs and starts protoc and PostgreSQL when missing, unless DATABASE_URL is set.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_protoc
ensure_database "${CHATKPI_DB_NAME:-chatkpi}"
[ "$#" -gt 0 ] || set -- serve
exec cargo run --release --locked --quiet -- "$@"
