#!/usr/bin/env bash
# Live cost benchmark (not a test): what one live phase costs the server, by build and by
# allocator setting, where latency alone is too noisy on a shared machine to compare builds.
# For each BINARY given (default: this checkout's release build), on a fresh copy of the
# live data set of bench/live.sh: a server, the dashboard's three questions once, 10 s of
# warm-up at RATE, then SECONDS at RATE; prints the server's CPU seconds and minor page faults
# over those SECONDS (from /proc), per question, and the questions' p50 / p95.
#
#   bench/live-cost.sh [RATE] [SECONDS] [BINARY...]      defaults: 100 30 target/release/chatkpi
#
# Environment: CONF (jemalloc options for the server, as _RJEM_MALLOC_CONF), CONVERSATIONS
# (default 1000000: the data set of `bench/live.sh 1000000`, loaded if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
RATE=${1:-100}
SECONDS_PER_RUN=${2:-30}
shift $(($# < 2 ? $# : 2))
BINARIES=("$@")
[ ${#BINARIES[@]} -eq 0 ] && build_release && BINARIES=(target/release/chatkpi)
CONVERSATIONS=${CONVERSATIONS:-1000000}
PORT=${BENCH_PORT:-50077}
FROM=2026-01-01T00:00:00Z
TO=2026-01-31T00:00:00Z
bulk_tenant chatkpi_live_$CONVERSATIONS live "$CONVERSATIONS" 7
# utime + stime (clock ticks) and minor faults of the server.
counters() { awk '{print $14 + $15, $10}' "/proc/$SERVER/stat"; }
for binary in "${BINARIES[@]}"; do
  fresh_copy chatkpi_live_$CONVERSATIONS
  BIN=$binary _RJEM_MALLOC_CONF=${CONF:-} start_server "$PORT"
  ask() {
    $BENCH live --server "http://127.0.0.1:$PORT" --api-key "$KEY" --from $FROM --to $TO \
      --rate "$RATE" --label live --run "$1" "${@:2}"
  }
  $BENCH bench-queries --server "http://127.0.0.1:$PORT" --api-key "$KEY" --from $FROM --to $TO \
    --time-zone Europe/Berlin --queries overview,breakdown_agent,series_day --iterations 1 >/dev/null
  ask warm --seconds 10 >/dev/null
  SAMPLES=$(mktemp)
  read -r cpu0 faults0 < <(counters)
  ask measured --seconds "$SECONDS_PER_RUN" --samples "$SAMPLES" | head -1
  read -r cpu1 faults1 < <(counters)
  questions=$(wc -l <"$SAMPLES")
  ticks=$(getconf CLK_TCK)
  log "$binary${CONF:+ ($CONF)}:"
  awk -v c=$((cpu1 - cpu0)) -v f=$((faults1 - faults0)) -v q="$questions" -v t="$ticks" -v s="$SECONDS_PER_RUN" \
    'BEGIN { printf "server CPU %.1f s over %d s (%.1f ms per question), minor page faults %d (%d per question)\n", c / t, s, 1000 * c / t / q, f, f / q }'
  summarize "$SAMPLES"
  rss
  stop_server
  rm -f "$SAMPLES"
done
