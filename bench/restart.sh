#!/usr/bin/env bash
# Restart benchmark (not a test): the first 30-day overview of a restarted server on the tenant
# of bench/query.sh (run that first: its database and key are kept), in one run:
#   1. RESTARTS times with nothing written since the overview was last answered: its kept
#      answer holds (docs/metrics.md §9, "Kept answers") and answers it;
#   2. RESTARTS times after a few conversations were written into the window since (through a
#      server, as a CRM would): the kept answer no longer holds, and the server loads the
#      tenant's days (reading their kept totals back) before it answers.
# Each prints the time from the server listening to the answer of a client that asks at once
# (without waiting for SERVING: a load balancer waits, a dashboard pointed at the server does
# not), the time from the start to SERVING (the warm-up: days loaded, questions asked again),
# and the server's peak RSS.
#
#   bench/restart.sh [CONVERSATIONS]        default: 1000000
#
# Environment: RESTARTS (default 2), CACHE_BYTES (the server's --cache-bytes).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
CONVERSATIONS=${1:-1000000}
RESTARTS=${RESTARTS:-2}
PORT=${BENCH_PORT:-50073}
DB=chatkpi_qbench_$CONVERSATIONS
STATE=bench-data/$DB.key
FROM=2026-01-01T00:00:00Z
TO=2026-01-31T00:00:00Z
SERVE_FLAGS=()
[ -n "${CACHE_BYTES:-}" ] && SERVE_FLAGS+=(--cache-bytes "$CACHE_BYTES")
if [ ! -f "$STATE" ]; then
  log "no $STATE: run bench/query.sh $CONVERSATIONS first"
  exit 1
fi

build_release
unset DATABASE_URL
ensure_database "$DB"
KEY=$(sed -n 's/^api_key=//p' "$STATE")
TENANT=$(sed -n 's/^tenant_id=//p' "$STATE")
SAMPLES=$(mktemp)
ONE=$(mktemp)

# first_overview LABEL: a fresh server's first overview, recorded as LABEL; the server is left
# running (SERVER).
first_overview() {
  local started
  started=$(date +%s%N)
  start_server "$PORT" "${SERVE_FLAGS[@]}"
  $BENCH bench-queries --server "http://127.0.0.1:$PORT" --api-key "$KEY" --from $FROM --to $TO \
    --time-zone Europe/Berlin --queries overview --iterations 1 --no-warmup --retry-while-loading \
    --no-wait-for-serving --samples "$ONE" >/dev/null
  sed "s/^overview,/$1,/" "$ONE" >>"$SAMPLES"
  local answered=$(cut -d, -f2 "$ONE")
  # Then until SERVING (a last-day overview after it: tens of ms).
  $BENCH bench-queries --server "http://127.0.0.1:$PORT" --api-key "$KEY" --from $FROM --to $TO \
    --time-zone Europe/Berlin --queries overview_1d --iterations 1 --no-warmup >/dev/null
  log "$1: first overview $answered ms after listening; SERVING $(( ($(date +%s%N) - started) / 1000000 )) ms after start; $(rss)"
  : >"$ONE"
}

# wait_for_kept SINCE: until a kept answer of the tenant is written after SINCE (at most 30 s).
wait_for_kept() {
  for _ in $(seq 1 60); do
    [ "$(psql "$DATABASE_URL" -Atqc "select count(*) from kept_answers where tenant_id = $TENANT and written_at > '$1'")" -gt 0 ] && return 0
    sleep 0.5
  done
  log "no kept answer written since $1"
}

log "priming: the overview answered and kept"
first_overview priming
wait_for_kept -infinity
stop_server
for _ in $(seq 1 "$RESTARTS"); do
  first_overview nothing_written_since
  stop_server
done
for i in $(seq 1 "$RESTARTS"); do
  start_server "$PORT" "${SERVE_FLAGS[@]}"
  # A seed of its own (the time): the conversations are new, not duplicates of an earlier run's.
  $BENCH simulate --conversations 3 --days 1 --seed "$(date +%s)$i" --start 2026-01-20 --agents 60 \
    --server "http://127.0.0.1:$PORT" --api-key "$KEY" >/dev/null
  stop_server
  SINCE=$(date -u +%FT%T.%NZ)
  first_overview conversations_written_since
  wait_for_kept "$SINCE"
  stop_server
done
grep -v '^priming,' "$SAMPLES" >"$ONE"
summarize "$ONE"
rm -f "$SAMPLES" "$ONE"
