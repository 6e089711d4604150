#!/usr/bin/env bash
# Query benchmark (not a test): a tenant with CONVERSATIONS simulated conversations over 30 days
# (kept between runs in database chatkpi_qbench_<N>), then, in one run:
#   1. warm latency of GetOverview (30 days and the last day), GetBreakdown by agent and a
#      daily GetTimeSeries in Europe/Berlin, in ROUNDS rounds interleaved with the DuckDB anchor
#      (the same overview over the same facts, bench/duckdb_overview.py, 2 threads);
#   2. the server's RSS after it;
#   3. cold starts: RESTARTS times, a fresh server answers its first overview (the tenant's
#      segments, presence and conversions are read from their persisted snapshots).
#
#   bench/query.sh [CONVERSATIONS] [ITERATIONS] [ROUNDS]        defaults: 1000000 10 4
#
# Environment: BULK=1 loads with `chatkpi-bench bulk-load --facts-only` (facts, presence and
# conversions; not the message-level events) instead of streaming every event over gRPC;
# CACHE_BYTES sets the server's --cache-bytes (default: the server's); RESTARTS (default 10);
# DUCKDB=0 skips the anchor (pip install duckdb).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
CONVERSATIONS=${1:-1000000}
ITERATIONS=${2:-10}
ROUNDS=${3:-4}
RESTARTS=${RESTARTS:-10}
PORT=${BENCH_PORT:-50072}
DB=chatkpi_qbench_$CONVERSATIONS
STATE=bench-data/$DB.key
FACTS=bench-data/$DB
FROM=2026-01-01T00:00:00Z
TO=2026-01-31T00:00:00Z
# The server keeps its default request timeout (30 s). The first query of a fresh data set builds
# every day from the records: at 10 M conversations longer than that, so the cold calls retry
# while the server answers UNAVAILABLE with the load's progress (printed), and the time recorded
# runs from the first attempt.
SERVE_FLAGS=()
[ -n "${CACHE_BYTES:-}" ] && SERVE_FLAGS+=(--cache-bytes "$CACHE_BYTES")

build_release
unset DATABASE_URL
[ -f "$STATE" ] || RECREATE_DATABASE=1
RECREATE_DATABASE=${RECREATE_DATABASE:-0} ensure_database "$DB"
mkdir -p bench-data

if [ ! -f "$STATE" ]; then
  if [ "${BULK:-0}" = 1 ]; then
    log "bulk-loading $CONVERSATIONS conversations over 30 days (facts only)"
    $BENCH bulk-load --facts-only --conversations "$CONVERSATIONS" --days 30 --seed 7 --start 2026-01-01 \
      --agents 60 --tenant-name qbench 2>/dev/null >"$STATE.out"
  else
    start_server "$PORT"
    $BIN tenant create --name qbench >"$STATE.out"
    log "loading $CONVERSATIONS conversations over 30 days through gRPC"
    $BENCH simulate --conversations "$CONVERSATIONS" --days 30 --seed 7 --start 2026-01-01 \
      --agents 60 --server "http://127.0.0.1:$PORT" --api-key "$(sed -n 's/^api_key=//p' "$STATE.out")" \
      --streams 4 --batch 1000
    stop_server
  fi
  psql "$DATABASE_URL" -qc "vacuum analyze" >/dev/null
  mv "$STATE.out" "$STATE"
fi
KEY=$(sed -n 's/^api_key=//p' "$STATE")
TENANT=$(sed -n 's/^tenant_id=//p' "$STATE")
psql "$DATABASE_URL" -Atqc "select 'stored events=' || (select count(*) from events) || ' conversations=' || (select count(*) from conversations) || ' database=' || pg_size_pretty(pg_database_size(current_database()))"
if [ "${DUCKDB:-1}" = 1 ] && [ ! -f "$FACTS.conversations.csv" ]; then
  log "exporting the facts for DuckDB"
  $BENCH export-facts --tenant "$TENANT" --out "$FACTS"
fi

SAMPLES=$(mktemp)
start_server "$PORT" "${SERVE_FLAGS[@]}"
log "first query (no snapshot yet on a fresh data set: built from the records)"
$BENCH bench-queries --server "http://127.0.0.1:$PORT" --api-key "$KEY" --from $FROM --to $TO \
  --time-zone Europe/Berlin --queries overview --iterations 1 --no-warmup --retry-while-loading
for round in $(seq 1 "$ROUNDS"); do
  log "round $round of $ROUNDS"
  $BENCH bench-queries --server "http://127.0.0.1:$PORT" --api-key "$KEY" --from $FROM --to $TO \
    --time-zone Europe/Berlin --queries overview,overview_1d,breakdown_agent,series_day \
    --iterations "$ITERATIONS" --samples "$SAMPLES" >/dev/null
  if [ "${DUCKDB:-1}" = 1 ]; then
    python3 bench/duckdb_overview.py "$FACTS" $FROM $TO "$ITERATIONS" --samples "$SAMPLES" --quiet >/dev/null
  fi
done
summarize "$SAMPLES"
rss
# Let the background snapshot writes finish before measuring cold starts.
DAYS=$(psql "$DATABASE_URL" -Atqc "select count(distinct segment_day) from conversations where tenant_id = $TENANT")
for _ in $(seq 1 120); do
  [ "$(psql "$DATABASE_URL" -Atqc "select count(*) from segments where tenant_id = $TENANT")" -ge "$DAYS" ] &&
    [ "$(psql "$DATABASE_URL" -Atqc "select count(*) from side_snapshots where tenant_id = $TENANT")" = 1 ] && break
  sleep 1
done
# ...and the kept totals persisted beside them (engine/kpi/stored.rs): until their count holds
# for 5 s.
LAST=-1
STILL=0
for _ in $(seq 1 300); do
  NOW=$(psql "$DATABASE_URL" -Atqc "select count(*) || ' ' || coalesce(sum(length(body)), 0) from kept_totals where tenant_id = $TENANT")
  if [ "$NOW" = "$LAST" ]; then STILL=$((STILL + 1)); else STILL=0; LAST=$NOW; fi
  [ "$STILL" -ge 5 ] && break
  sleep 1
done
log "kept totals persisted: $(psql "$DATABASE_URL" -Atqc "select count(*) || ' (' || count(distinct segment_day) || ' days), ' || coalesce(pg_size_pretty(sum(length(body))), '0 bytes') from kept_totals where tenant_id = $TENANT")"
log "snapshots: $(psql "$DATABASE_URL" -Atqc "select count(distinct segment_day) || ' days in ' || count(*) || ' parts, ' || pg_size_pretty(sum(length(body))) from segment_parts where tenant_id = $TENANT"); presence and conversions: $(psql "$DATABASE_URL" -Atqc "select coalesce(pg_size_pretty(sum(length(body))), 'none') from side_snapshots where tenant_id = $TENANT")"
stop_server

COLD=$(mktemp)
for i in $(seq 1 "$RESTARTS"); do
  start_server "$PORT" "${SERVE_FLAGS[@]}"
  $BENCH bench-queries --server "http://127.0.0.1:$PORT" --api-key "$KEY" --from $FROM --to $TO \
    --time-zone Europe/Berlin --queries overview --iterations 1 --no-warmup --retry-while-loading \
    --samples "$COLD"
  [ "$i" = "$RESTARTS" ] && rss
  stop_server
done
sed -i 's/^overview,/first_overview_after_restart,/' "$COLD"
summarize "$COLD"
rm -f "$SAMPLES" "$COLD"
