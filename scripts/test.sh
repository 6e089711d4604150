#!/usr/bin/env bash
# Runs the whole test suite (unit + end-to-end against a real PostgreSQL).
# Installs and starts protoc and PostgreSQL when missing; without DATABASE_URL it uses a fresh
# local database chatkpi_test (dropped and recreated on every run). Extra arguments go to
# `cargo test` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_protoc
RECREATE_DATABASE=1 ensure_database chatkpi_test
exec cargo test --locked "$@"
