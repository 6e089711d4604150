#!/usr/bin/env bash
# History benchmark (not a test): does a query cost what its window holds, or the tenant's
# whole history? Two tenants of the same density (about 100 k conversations a month) in one
# database (chatkpi_hbench, kept between runs):
#   long:  PER_MONTH x 6 conversations over the 180 days that end on 2026-01-31;
#   short: PER_MONTH conversations over the last 30 of those days only.
# Both are asked the same 30-day overview (2026-01-01 .. 2026-01-31) and the same 1-day
# overview (its last day), rounds interleaved so machine noise hits both alike; the script
# prints p50/p95 per tenant and the long / short ratio of the 30-day overview, and the
# server's RSS.
#
#   bench/history.sh [PER_MONTH] [ITERATIONS] [ROUNDS]        defaults: 100000 20 5
#
# Environment: CACHE_BYTES sets the server's --cache-bytes (default: the server's).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
PER_MONTH=${1:-100000}
ITERATIONS=${2:-20}
ROUNDS=${3:-5}
PORT=${BENCH_PORT:-50073}
DB=chatkpi_hbench_$PER_MONTH
STATE=bench-data/$DB
FROM=2026-01-01T00:00:00Z
TO=2026-01-31T00:00:00Z
SERVE_FLAGS=()
[ -n "${CACHE_BYTES:-}" ] && SERVE_FLAGS=(--cache-bytes "$CACHE_BYTES")

build_release
unset DATABASE_URL
[ -f "$STATE.long.key" ] && [ -f "$STATE.short.key" ] || RECREATE_DATABASE=1
RECREATE_DATABASE=${RECREATE_DATABASE:-0} ensure_database "$DB"
mkdir -p bench-data

# load NAME CONVERSATIONS DAYS START: one tenant, facts only, same simulator settings.
load() {
  [ -f "$STATE.$1.key" ] && return 0
  log "bulk-loading tenant $1: $2 conversations over $3 days from $4 (facts only)"
  $BENCH bulk-load --facts-only --conversations "$2" --days "$3" --seed 11 --start "$4" \
    --agents 60 --tenant-name "hbench-$1" 2>/dev/null >"$STATE.$1.out"
  mv "$STATE.$1.out" "$STATE.$1.key"
}
load long $((PER_MONTH * 6)) 180 2025-08-04
load short "$PER_MONTH" 30 2026-01-01
psql "$DATABASE_URL" -qc "vacuum analyze" >/dev/null
psql "$DATABASE_URL" -Atqc "select 'tenant ' || t.name || ': ' || count(*) || ' conversations, ' || count(*) filter (where c.opened_at >= '$FROM' and c.opened_at < '$TO') || ' opened in the window' from conversations c join tenants t using (tenant_id) group by t.name order by t.name"

SAMPLES=$(mktemp)
start_server "$PORT" "${SERVE_FLAGS[@]}"
# ask TENANT: one round of the 30-day and 1-day overviews, samples tagged with the tenant.
ask() {
  local part
  part=$(mktemp)
  $BENCH bench-queries --server "http://127.0.0.1:$PORT" --api-key "$(sed -n 's/^api_key=//p' "$STATE.$1.key")" \
    --from $FROM --to $TO --time-zone Europe/Berlin --queries overview,overview_1d \
    --iterations "$ITERATIONS" --samples "$part" >/dev/null
  sed "s/^/$1_/" "$part" >>"$SAMPLES"
  rm -f "$part"
}
for round in $(seq 1 "$ROUNDS"); do
  log "round $round of $ROUNDS"
  ask long
  ask short
done
summarize "$SAMPLES"
python3 - "$SAMPLES" <<'PY'
import sys
sys.path.insert(0, "bench")
from samples import load, rank
s = load(sys.argv[1])
for p in (.5, .95):
    print(f"6 months / 1 month, 30-day overview p{int(p * 100)}: {rank(s['long_overview'], p) / rank(s['short_overview'], p):.2f}x")
PY
rss
stop_server
rm -f "$SAMPLES"
