#!/usr/bin/env bash
# Soak script (not a test): MINUTES of mixed load on one server, at about 80 % of the ingest
# capacity measured by bench/ingest.sh on this machine, and reports errors, latency and RSS over
# time.
#
#   bench/soak.sh [MINUTES] [EVENTS_PER_SEC]        defaults: 10 28000
#
# Load, all at once on one tenant (database chatkpi_soak, dropped at the end):
#   - ingest: `chatkpi-bench simulate --server` on 4 streams paced at EVENTS_PER_SEC (default
#     80 % of the ~35k events/s bench/ingest.sh measures here);
#   - dashboards: every 20 s a round of GetOverview (30 days and 1 day), GetBreakdown by agent
#     and a daily series in Berlin time, 3 timed calls each (bench-queries);
#   - watchers: 8 sliding WatchOverview streams pushing every 5 s (chatkpi-bench watch).
# Every 20 s it prints one line: elapsed, server RSS, events acknowledged so far (from the
# metrics endpoint), query p50 / p95 of the round; at the end the error counts by status.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
MINUTES=${1:-10}
RATE=${2:-28000}
PORT=${BENCH_PORT:-50075}
METRICS=${BENCH_METRICS_PORT:-50076}
SECONDS_TOTAL=$((MINUTES * 60))
OUT=$(mktemp -d)
ensure_protoc
unset DATABASE_URL
RECREATE_DATABASE=1 ensure_database chatkpi_soak >/dev/null 2>&1
cargo build --release --locked --quiet
# SERVER_BIN: another build's server in the same harness (the anchor of a before/after run).
BIN=${SERVER_BIN:-target/release/chatkpi}
BENCH=target/release/chatkpi-bench
$BIN migrate >/dev/null
KEY=$($BIN tenant create --name soak | sed -n 's/^api_key=//p')

CHATKPI_LISTEN=127.0.0.1:$PORT CHATKPI_METRICS_LISTEN=127.0.0.1:$METRICS RUST_LOG=warn \
  $BIN serve 2>"$OUT/server.log" &
SERVER=$!
trap 'kill $SERVER ${LOAD:-} ${WATCH:-} 2>/dev/null || true; rm -rf "$OUT"' EXIT
for _ in $(seq 1 100); do (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.2; done

# Conversations spread over the 30 days before today, enough to last the whole soak at RATE
# (the simulator makes about 16 events per conversation).
CONVERSATIONS=$((RATE * SECONDS_TOTAL / 16 + 10000))
START=$(date -u -d '44 days ago' +%F)
log "soak: $MINUTES min, ingest paced at $RATE events/s ($CONVERSATIONS conversations from $START), 8 watchers, a query round every 20 s"
$BENCH simulate --conversations "$CONVERSATIONS" --days 30 --start "$START" --seed 11 \
  --server "http://127.0.0.1:$PORT" --api-key "$KEY" --streams 4 --batch 500 --rate "$RATE" \
  >"$OUT/ingest.txt" 2>"$OUT/ingest.err" &
LOAD=$!
$BENCH watch --server "http://127.0.0.1:$PORT" --api-key "$KEY" --watchers 8 --interval 5 \
  --seconds "$SECONDS_TOTAL" >"$OUT/watch.txt" 2>"$OUT/watch.err" &
WATCH=$!

acked() {
  curl -s "http://127.0.0.1:$METRICS/metrics" |
    awk '/^chatkpi_events_total/ { s += $NF } END { printf "%d", s }'
}
FROM=$(date -u -d "$START" +%FT%TZ)
TO=$(date -u -d "$START + 30 days" +%FT%TZ)
BEGAN=$(date +%s)
printf '%8s %10s %14s %22s %22s\n' elapsed rss_mib events_acked overview_p50/p95_ms breakdown_p50/p95_ms
while (( $(date +%s) - BEGAN < SECONDS_TOTAL )); do
  sleep 20
  : >"$OUT/round.csv"
  $BENCH bench-queries --server "http://127.0.0.1:$PORT" --api-key "$KEY" --from "$FROM" --to "$TO" \
    --iterations 3 --queries overview,overview_1d,breakdown_agent,series_day \
    --samples "$OUT/round.csv" >/dev/null 2>>"$OUT/queries.err" || echo "query round failed" >>"$OUT/queries.err"
  cat "$OUT/round.csv" >>"$OUT/all.csv"
  stat() { awk -F, -v k="$1" '$1 == k { print $2 }' "$OUT/round.csv" | sort -n |
    awk '{ a[NR] = $1 } END { if (NR) printf "%.0f/%.0f", a[int((NR + 1) / 2)], a[NR]; else printf "-" }'; }
  RSS=$(awk '/VmRSS/ { printf "%.0f", $2 / 1024 }' /proc/$SERVER/status)
  printf '%8s %10s %14s %22s %22s\n' "$(( $(date +%s) - BEGAN ))s" "$RSS" "$(acked)" \
    "$(stat overview)" "$(stat breakdown_agent)"
done
wait $WATCH || true
kill -TERM $LOAD 2>/dev/null || true  # (SIGINT is ignored by background jobs)
wait $LOAD 2>/dev/null || true

echo "--- totals"
echo "server peak RSS: $(awk '/VmHWM/ { printf "%.0f MiB", $2 / 1024 }' /proc/$SERVER/status)"
echo "events acknowledged: $(acked) in $SECONDS_TOTAL s ($(( $(acked) / SECONDS_TOTAL )) events/s)"
cat "$OUT/watch.txt"
for k in overview overview_1d breakdown_agent series_day; do
  awk -F, -v k="$k" '$1 == k { print $2 }' "$OUT/all.csv" | sort -n |
    awk -v k="$k" '{ a[NR] = $1 } END { if (NR) printf "%s: n=%d p50=%.1f ms p95=%.1f ms max=%.1f ms\n", k, NR, a[int((NR + 1) / 2)], a[int(NR * 0.95 + 0.5)], a[NR] }'
done
echo "calls by status (metrics endpoint):"
curl -s "http://127.0.0.1:$METRICS/metrics" | grep '^chatkpi_rpc_requests_total' |
  sed 's/.*code="\([^"]*\)".*} \(.*\)/\1 \2/' | awk '{ s[$1] += $2 } END { for (c in s) print "  " c, s[c] }'
echo "stream reopenings by the ingest client: $(grep -c resending "$OUT/ingest.err" || true)"
echo "failed query rounds: $(grep -c 'failed' "$OUT/queries.err" || true)"
echo "server error lines: $(grep -c ' ERROR ' "$OUT/server.log" || true)"
# The log goes with the run's directory: its warnings (why a call was refused) are kept here.
echo "server warning lines: $(grep -c ' WARN ' "$OUT/server.log" || true)"
grep ' WARN ' "$OUT/server.log" | sed 's/^[^ ]* *//' | cut -c1-300 | sort | uniq -c | sort -rn | head -5 || true
kill -TERM $SERVER; wait $SERVER || true
psql "${DATABASE_URL%/*}/postgres" -qc "drop database if exists chatkpi_soak"
