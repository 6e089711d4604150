#!/usr/bin/env bash
# Import benchmark (not a test): `chatkpi import` of a JSON-lines file against the anchor
# `chatkpi-bench simulate --server` streaming the same events (same seed) in the same run, each
# into a fresh database, rounds interleaved so machine noise hits both alike.
#
#   bench/import.sh [CONVERSATIONS] [ROUNDS]        defaults: 62000 (about 1 M events) 2
#
# Both use 2 streams of 1,000-event batches. Prints events/s per run and import / simulate.
# Uses database chatkpi_ibench (dropped at the end) and bench-data/import-<N>.jsonl.gz.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
CONVERSATIONS=${1:-62000}
ROUNDS=${2:-2}
PORT=${BENCH_PORT:-50077}
FILE=bench-data/import-$CONVERSATIONS.jsonl.gz
SIM=(--conversations "$CONVERSATIONS" --days 30 --seed 42 --start 2026-01-01)
build_release
mkdir -p bench-data
if ! [ -s "$FILE" ]; then
  log "writing $FILE"
  $BENCH simulate "${SIM[@]}" --out - | gzip -1 >"$FILE"
fi
EVENTS=$(zcat "$FILE" | wc -l)
log "$EVENTS events in $FILE ($(du -h "$FILE" | cut -f1))"

fresh() {
  unset DATABASE_URL
  RECREATE_DATABASE=1 ensure_database chatkpi_ibench >/dev/null 2>&1
  $BIN migrate >/dev/null
  KEY=$($BIN tenant create --name import | sed -n 's/^api_key=//p')
  start_server "$PORT"
}

rate() { awk -v e="$EVENTS" -v s="$1" 'BEGIN { printf "%.0f", e / s }'; }
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f", b - a }'; }

for round in $(seq 1 "$ROUNDS"); do
  fresh
  began=$(date +%s.%N)
  $BENCH simulate "${SIM[@]}" --server "http://127.0.0.1:$PORT" --api-key "$KEY" --streams 2 \
    --batch 1000 >/dev/null
  sim=$(since "$began")
  stop_server
  fresh
  rm -f "$FILE.checkpoint" "$FILE.rejects.jsonl"
  began=$(date +%s.%N)
  $BIN import "$FILE" --server "http://127.0.0.1:$PORT" --api-key "$KEY" --streams 2 --batch 1000 \
    2>"$FILE.log"
  imp=$(since "$began")
  tail -1 "$FILE.log"
  stop_server
  printf 'round %s: simulate --server %.1f s (%s events/s), import %.1f s (%s events/s), import / simulate time %.2f\n' \
    "$round" "$sim" "$(rate "$sim")" "$imp" "$(rate "$imp")" "$(awk -v i="$imp" -v s="$sim" 'BEGIN { print i / s }')"
done
rm -f "$FILE.checkpoint" "$FILE.rejects.jsonl" "$FILE.log"
psql "${DATABASE_URL%/*}/postgres" -qc "drop database if exists chatkpi_ibench"
