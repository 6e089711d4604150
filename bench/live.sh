#!/usr/bin/env bash
# Live benchmark (not a test): dashboards of a tenant that writes. A tenant with CONVERSATIONS
# simulated conversations over January 2026 (bulk-loaded once into chatkpi_live_<N>), then, in
# one run, ROUNDS times: the dashboard's three questions (30-day Berlin overview, breakdown by
# agent, daily series) asked in turn every 0.25 s for SECONDS each
#   1. settled (nothing written),
#   2. while 100 events/s stream into the window's last day (a large tenant's busy hour),
#   3. while 3,000 events/s do (an import or a backfill);
# every overview is checked to count every conversation acknowledged before it was asked, and
# the server's peak RSS is sampled in each phase. Each run starts from a copy of the loaded data
# (database chatkpi_live_<N>_base), so runs compare.
#
#   bench/live.sh [CONVERSATIONS] [SECONDS] [ROUNDS]      defaults: 1000000 60 2
#
# Environment: CACHE_BYTES (the server's --cache-bytes), SERVE_FLAGS (more flags).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
CONVERSATIONS=${1:-1000000}
SECONDS_PER_PHASE=${2:-60}
ROUNDS=${3:-2}
PORT=${BENCH_PORT:-50074}
FROM=2026-01-01T00:00:00Z
TO=2026-01-31T00:00:00Z
build_release
bulk_tenant chatkpi_live_$CONVERSATIONS live "$CONVERSATIONS" 7
# Every run starts from the loaded data set (the live phases add conversations to it).
fresh_copy chatkpi_live_$CONVERSATIONS
FLAGS=(${SERVE_FLAGS:-})
[ -n "${CACHE_BYTES:-}" ] && FLAGS+=(--cache-bytes "$CACHE_BYTES")
SAMPLES=$(mktemp)
start_server "$PORT" "${FLAGS[@]}"
$BENCH bench-queries --server "http://127.0.0.1:$PORT" --api-key "$KEY" --from $FROM --to $TO \
  --time-zone Europe/Berlin --queries overview,breakdown_agent,series_day --iterations 1 \
  --retry-while-loading >/dev/null
RUN=$(date +%s)
for round in $(seq 1 "$ROUNDS"); do
  for rate in 0 100 3000; do
    label=$([ "$rate" = 0 ] && echo settled || echo "live$rate")
    log "round $round: $label"
    peak_rss_while $BENCH live --server "http://127.0.0.1:$PORT" --api-key "$KEY" --from $FROM --to $TO \
      --rate "$rate" --seconds "$SECONDS_PER_PHASE" --label "$label" --samples "$SAMPLES" \
      --run "$RUN-$round-$rate"
  done
done
summarize "$SAMPLES"
python3 - "$SAMPLES" <<'PY'
import sys
sys.path.insert(0, "bench")
from samples import load, rank
s = load(sys.argv[1])
def p95(v):
    return rank(v, .95)
for kind in ["overview", "breakdown_agent", "series_day"]:
    base = p95(s[f"settled:{kind}"])
    for rate in ["live100", "live3000"]:
        print(f"{kind}: p95 {rate} / settled = {p95(s[f'{rate}:{kind}']) / base:.2f}x")
PY
rss
stop_server
rm -f "$SAMPLES"
