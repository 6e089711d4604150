#!/usr/bin/env bash
# SLA cost benchmark (not a test): what five SLA policies (two of them counting business hours,
# docs/metrics.md §10) add to a dashboard. A tenant with CONVERSATIONS simulated conversations
# over January 2026 (bulk-loaded once into chatkpi_live_<N>, shared with bench/live.sh), then, in
# one run, ROUNDS times, first without policies and then with the five:
#   1. the first 30-day Berlin overview after the change (every day's totals are built again:
#      the policies are part of what kept totals depend on);
#   2. the dashboard's three questions asked in turn every 0.25 s for SECONDS, settled;
#   3. the same while 100 events/s stream into the window's last day.
# Samples are labelled `none:` / `sla:`; the ratio sla / none of the overview's p95 is printed
# per phase, with the server's peak RSS.
#
#   bench/sla.sh [CONVERSATIONS] [SECONDS] [ROUNDS]      defaults: 1000000 30 2
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
CONVERSATIONS=${1:-1000000}
SECONDS_PER_PHASE=${2:-30}
ROUNDS=${3:-2}
PORT=${BENCH_PORT:-50076}
FROM=2026-01-01T00:00:00Z
TO=2026-01-31T00:00:00Z
build_release
bulk_tenant chatkpi_live_$CONVERSATIONS live "$CONVERSATIONS" 7
fresh_copy chatkpi_live_$CONVERSATIONS
SAMPLES=$(mktemp)
start_server "$PORT"

# settings JSON: business hours Mon-Fri 09:00-18:00 Berlin, and the policies.
settings() {
  curl -sf -X POST "http://127.0.0.1:$PORT/chatkpi.v1.MetricsService/UpdateSettings" \
    -H "authorization: Bearer $KEY" -H 'content-type: application/json' -d @- >/dev/null
}
HOURS='"businessHours": {"timeZone": "Europe/Berlin", "days": [
  {"weekday": 1, "intervals": [{"open": "09:00", "close": "18:00"}]},
  {"weekday": 2, "intervals": [{"open": "09:00", "close": "18:00"}]},
  {"weekday": 3, "intervals": [{"open": "09:00", "close": "18:00"}]},
  {"weekday": 4, "intervals": [{"open": "09:00", "close": "18:00"}]},
  {"weekday": 5, "intervals": [{"open": "09:00", "close": "18:00"}]}]}'
NONE='{"slaPolicies": {"policies": []}}'
FIVE='{"slaPolicies": {"policies": [
  {"name": "urgent chats", "conditions": {"channels": ["CHANNEL_WHATSAPP", "CHANNEL_WEBCHAT"],
   "priorities": ["PRIORITY_URGENT", "PRIORITY_HIGH"]},
   "firstResponse": {"seconds": 120}, "nextResponse": {"seconds": 600},
   "resolution": {"seconds": 14400, "businessHours": true}},
  {"name": "billing", "conditions": {"tags": ["billing", "refund"]},
   "firstResponse": {"seconds": 300, "businessHours": true}, "resolution": {"seconds": 86400}},
  {"name": "sales", "conditions": {"teams": ["sales"], "inboxes": ["wa-sales"]},
   "nextResponse": {"seconds": 300}},
  {"name": "email", "conditions": {"channels": ["CHANNEL_EMAIL"]},
   "firstResponse": {"seconds": 3600}, "nextResponse": {"seconds": 7200}, "resolution": {"seconds": 172800}},
  {"name": "everyone", "firstResponse": {"seconds": 180}, "nextResponse": {"seconds": 240},
   "resolution": {"seconds": 28800}}]}}'
# The server answers UNAVAILABLE until its database is ready: wait for that.
for _ in $(seq 1 600); do
  echo '{}' | curl -sf -X POST "http://127.0.0.1:$PORT/chatkpi.v1.MetricsService/GetSettings" \
    -H "authorization: Bearer $KEY" -H 'content-type: application/json' -d @- >/dev/null && break
  sleep 0.5
done
echo "{$HOURS}" | settings

RUN=$(date +%s)
for round in $(seq 1 "$ROUNDS"); do
  for config in none sla; do
    if [ "$config" = none ]; then echo "$NONE" | settings; else echo "$FIVE" | settings; fi
    log "round $round, $config: first overview after the change"
    $BENCH bench-queries --server "http://127.0.0.1:$PORT" --api-key "$KEY" --from $FROM --to $TO \
      --time-zone Europe/Berlin --queries overview --iterations 1 --no-warmup \
      | sed -n 's/^overview: n=1 p50=\([0-9.]*\) ms.*/\1/p' | sed "s/^/$config:first_overview,/" >>"$SAMPLES"
    for rate in 0 100; do
      label=$config:$([ "$rate" = 0 ] && echo settled || echo "live$rate")
      log "round $round: $label"
      peak_rss_while $BENCH live --server "http://127.0.0.1:$PORT" --api-key "$KEY" --from $FROM --to $TO \
        --rate "$rate" --seconds "$SECONDS_PER_PHASE" --label "$label" --samples "$SAMPLES" \
        --run "$RUN-$round-$config-$rate"
    done
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
for phase in ["first_overview", "settled:overview", "live100:overview", "settled:breakdown_agent", "live100:series_day"]:
    none, sla = s.get(f"none:{phase}"), s.get(f"sla:{phase}")
    if none and sla:
        print(f"{phase}: p95 with five policies / without = {p95(sla) / p95(none):.2f}x "
              f"({p95(sla):.1f} / {p95(none):.1f} ms)")
PY
rss
stop_server
rm -f "$SAMPLES"
