#!/usr/bin/env bash
# Runs the whole test suite (unit + end-to-end against a real PostgreSQL).
# Installs protoc, Chromium (the dashboard's browser test) and PostgreSQL when missing, and
# starts PostgreSQL; without DATABASE_URL it uses a fresh
# local database chatkpi_test (dropped and recreated on every run). Then the Python client's
# tests (scripts/test-python.sh) against the server binary cargo built. Extra arguments go to
# `cargo test` (e.g. a test name filter) and skip the Python tests.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_protoc
ensure_chromium
RECREATE_DATABASE=1 ensure_database chatkpi_test
cargo test --locked "$@"
if [ "$#" -eq 0 ]; then scripts/test-python.sh; fi
