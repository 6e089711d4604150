#!/usr/bin/env bash
# Query benchmark (not a test): a tenant with CONVERSATIONS simulated conversations over 30 days,
# loaded through gRPC StreamEvents (kept between runs in database chatkpi_qbench_<N>), then
# `chatkpi-bench bench-queries` times the overview, the breakdown by agent and the daily series in
# Europe/Berlin over the 30-day window.
#
#   bench/query.sh [CONVERSATIONS] [ITERATIONS]      defaults: 1000000 20
#   BULK=1 bench/query.sh 10000000 5
#
# With BULK=1 the data set is loaded by `chatkpi-bench bulk-load --facts-only` instead of gRPC: the
# same simulator and fact derivation, written with COPY, storing the facts, presence and
# conversions that queries read but not the message-level events (10 M conversations in full
# would need about 75 GB of disk).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
CONVERSATIONS=${1:-1000000}
ITERATIONS=${2:-20}
PORT=${BENCH_PORT:-50072}
DB=chatkpi_qbench_$CONVERSATIONS
STATE=bench-data/$DB.key

ensure_protoc
unset DATABASE_URL
[ -f "$STATE" ] || RECREATE_DATABASE=1
RECREATE_DATABASE=${RECREATE_DATABASE:-0} ensure_database "$DB"
cargo build --release --locked --quiet
BIN=target/release/chatkpi
BENCH=target/release/chatkpi-bench
mkdir -p bench-data

CHATKPI_LISTEN=127.0.0.1:$PORT RUST_LOG=warn $BIN serve &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.2; done

if [ ! -f "$STATE" ] && [ "${BULK:-0}" = 1 ]; then
  kill $SERVER; wait $SERVER || true
  log "bulk-loading $CONVERSATIONS conversations over 30 days (facts only)"
  KEY=$($BENCH bulk-load --facts-only --conversations "$CONVERSATIONS" --days 30 --seed 7 --start 2026-01-01 \
    --agents 60 --tenant-name qbench 2>/dev/null | sed -n 's/^api_key=//p')
  echo "$KEY" > "$STATE"
  psql "$DATABASE_URL" -qc "vacuum analyze" >/dev/null
  CHATKPI_LISTEN=127.0.0.1:$PORT RUST_LOG=warn $BIN serve &
  SERVER=$!
  for _ in $(seq 1 100); do (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.2; done
fi
if [ ! -f "$STATE" ]; then
  KEY=$($BIN tenant create --name qbench | sed -n 's/^api_key=//p')
  log "loading $CONVERSATIONS conversations over 30 days through gRPC"
  $BENCH simulate --conversations "$CONVERSATIONS" --days 30 --seed 7 --start 2026-01-01 \
    --agents 60 --server "http://127.0.0.1:$PORT" --api-key "$KEY" --streams 4 --batch 1000
  echo "$KEY" > "$STATE"
  psql "$DATABASE_URL" -qc "vacuum analyze" >/dev/null
fi
KEY=$(cat "$STATE")
psql "$DATABASE_URL" -Atqc "select 'stored events=' || (select count(*) from events) || ' conversations=' || (select count(*) from conversations)"
$BENCH bench-queries --server "http://127.0.0.1:$PORT" --api-key "$KEY" \
  --from 2026-01-01T00:00:00Z --to 2026-01-31T00:00:00Z --iterations "$ITERATIONS" --time-zone Europe/Berlin
grep -E 'VmHWM|VmRSS' /proc/$SERVER/status | sed 's/^/server /'
kill -TERM $SERVER
wait $SERVER || true
trap - EXIT
