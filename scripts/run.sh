#!/usr/bin/env bash
# Runs chatkpi (release build). Without arguments: `serve` on 127.0.0.1:50051.
# Any arguments are passed to the binary: scripts/run.sh tenant create --name acme
# Builds the workspace, so target/release/chatkpi-bench (simulator, benchmark tools) is there too.
# Installs and starts protoc and PostgreSQL when missing, unless DATABASE_URL is set.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_protoc
ensure_database "${CHATKPI_DB_NAME:-chatkpi}"
[ "$#" -gt 0 ] || set -- serve
cargo build --release --locked --quiet
exec target/release/chatkpi "$@"
