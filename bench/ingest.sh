#!/usr/bin/env bash
# Ingest benchmark (not a test): streams simulated events through gRPC into Postgres with
# durable commits (synchronous_commit on, fsync on), facts derived in the same transactions.
#
#   bench/ingest.sh [CONVERSATIONS] [STREAMS] [DAYS]
#
# Defaults: 120000 conversations over 30 days (about 2.3 million events), 4 parallel streams.
# Uses a fresh database chatkpi_bench on the local Postgres (or BENCH_DATABASE_URL). Prints the
# client's throughput line and the server's peak RSS (VmHWM).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
CONVERSATIONS=${1:-120000}
STREAMS=${2:-4}
DAYS=${3:-30}
PORT=${BENCH_PORT:-50071}

ensure_protoc
if [ -n "${BENCH_DATABASE_URL:-}" ]; then
  export DATABASE_URL=$BENCH_DATABASE_URL
else
  unset DATABASE_URL
  RECREATE_DATABASE=1 ensure_database chatkpi_bench
fi
cargo build --release --locked --quiet
BIN=target/release/chatkpi
BENCH=target/release/chatkpi-bench

log "postgres: $(psql "$DATABASE_URL" -Atqc "select 'synchronous_commit=' || current_setting('synchronous_commit') || ' fsync=' || current_setting('fsync') || ' shared_buffers=' || current_setting('shared_buffers')")"
$BIN migrate >/dev/null
KEY=$($BIN tenant create --name bench | sed -n 's/^api_key=//p')

CHATKPI_LISTEN=127.0.0.1:$PORT RUST_LOG=warn $BIN serve &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.2
done

log "streaming $CONVERSATIONS conversations over $DAYS days on $STREAMS streams"
$BENCH simulate --conversations "$CONVERSATIONS" --days "$DAYS" --seed 42 --start 2026-01-01 \
  --server "http://127.0.0.1:$PORT" --api-key "$KEY" --streams "$STREAMS" --batch 1000
grep -E 'VmHWM|VmRSS' /proc/$SERVER/status | sed 's/^/server /'
psql "$DATABASE_URL" -Atqc "select 'stored events=' || (select count(*) from events) || ' conversations=' || (select count(*) from conversations)"
kill -TERM $SERVER
wait $SERVER || true
trap - EXIT
