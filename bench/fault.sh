#!/usr/bin/env bash
# Fault script (not a test): streams simulated events into chatkpi while the local PostgreSQL is
# restarted (immediate mode: no checkpoint, like a crash) and stopped for a few seconds, several
# times; then proves that every acknowledged event is stored exactly once and that the derived
# facts equal those of a fault-free run of the same events.
#
#   bench/fault.sh [CONVERSATIONS] [FAULTS]        defaults: 40000 6
#
# Needs the local cluster managed by pg_ctlcluster (scripts/lib.sh installs it) and root.
# The client (`chatkpi-bench simulate --server`, 2 streams) reopens a failed stream and resends
# its unacknowledged batches; a batch that was committed but whose acknowledgement was lost comes
# back DUPLICATE. Proof:
#   1. the client's acknowledgements cover every generated event: accepted + duplicate = events;
#   2. the database holds exactly `events` rows for the tenant (the primary key on event id makes
#      a second copy impossible; equality shows none is missing);
#   3. the facts (chatkpi-bench export-facts) are byte-identical to a run without faults.
# Uses databases chatkpi_fault and chatkpi_fault_ref (dropped at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
CONVERSATIONS=${1:-40000}
FAULTS=${2:-6}
PORT=${BENCH_PORT:-50074}
DAYS=10
OUT=$(mktemp -d)
ensure_protoc
cargo build --release --locked --quiet
BIN=target/release/chatkpi
BENCH=target/release/chatkpi-bench
CLUSTER=(15 main)

# A fresh database with one tenant: exports DATABASE_URL, sets KEY.
fresh() {
  unset DATABASE_URL
  RECREATE_DATABASE=1 ensure_database "$1" >/dev/null 2>&1
  $BIN migrate >/dev/null
  KEY=$($BIN tenant create --name fault | sed -n 's/^api_key=//p')
}

# Streams the simulated events to a server on DATABASE_URL; $1 = key, $2 = log file.
stream() {
  CHATKPI_LISTEN=127.0.0.1:$PORT RUST_LOG=warn $BIN serve 2>"$OUT/server.log" &
  SERVER=$!
  for _ in $(seq 1 100); do (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.2; done
  RUST_LOG=warn $BENCH simulate --conversations "$CONVERSATIONS" --days "$DAYS" --seed 7 \
    --start 2026-01-01 --server "http://127.0.0.1:$PORT" --api-key "$1" --streams 2 --batch 500 \
    >"$2" 2>"$2.err" &
  CLIENT=$!
}

finish() {
  wait $CLIENT
  kill -TERM $SERVER; wait $SERVER || true
}

log "reference run without faults"
fresh chatkpi_fault_ref
REF_URL=$DATABASE_URL
stream "$KEY" "$OUT/ref.txt"
finish
$BENCH export-facts --database-url "$REF_URL" --tenant 1 --out "$OUT/ref.csv" 2>/dev/null

log "run with $FAULTS faults"
fresh chatkpi_fault
URL=$DATABASE_URL
stream "$KEY" "$OUT/fault.txt"
for i in $(seq 1 "$FAULTS"); do
  sleep 3
  kill -0 $CLIENT 2>/dev/null || { log "the client finished before fault $i"; break; }
  if (( i % 2 )); then
    log "fault $i: immediate restart"
    pg_ctlcluster --skip-systemctl-redirect "${CLUSTER[@]}" restart -m immediate
  else
    log "fault $i: stopped for 5 s"
    pg_ctlcluster --skip-systemctl-redirect "${CLUSTER[@]}" stop -m immediate
    sleep 5
    pg_ctlcluster --skip-systemctl-redirect "${CLUSTER[@]}" start
  fi
done
finish
$BENCH export-facts --database-url "$URL" --tenant 1 --out "$OUT/fault.csv" 2>/dev/null

cat "$OUT/ref.txt" "$OUT/fault.txt"
RETRIES=$(grep -c "resending" "$OUT/fault.txt.err" || true)
STORED=$(psql "$URL" -Atqc "select count(*) from events where tenant_id = 1")
EVENTS=$(sed -n 's/.*events=\([0-9]*\) .*/\1/p' "$OUT/fault.txt")
ACKED=$(sed -n 's/.*accepted=\([0-9]*\) duplicates=\([0-9]*\).*/\1 + \2/p' "$OUT/fault.txt")
echo "streams reopened=$RETRIES events=$EVENTS acknowledged=$((ACKED)) stored=$STORED"
echo "server errors logged: $(grep -c ERROR "$OUT/server.log" || true)"
STATUS=0
[ "$((ACKED))" = "$EVENTS" ] || { echo "FAIL: acknowledged $((ACKED)) of $EVENTS events"; STATUS=1; }
[ "$STORED" = "$EVENTS" ] || { echo "FAIL: stored $STORED of $EVENTS events"; STATUS=1; }
# export-facts writes <out>.conversations.csv and <out>.replies.csv.
if cmp -s "$OUT/ref.csv.conversations.csv" "$OUT/fault.csv.conversations.csv" \
  && cmp -s "$OUT/ref.csv.replies.csv" "$OUT/fault.csv.replies.csv"; then
  echo "facts identical to the fault-free run ($(($(wc -l <"$OUT/ref.csv.conversations.csv") - 1)) conversations)"
else
  echo "FAIL: facts differ from the fault-free run"; STATUS=1
fi
psql "${URL%/*}/postgres" -qc "drop database if exists chatkpi_fault_ref" -c "drop database if exists chatkpi_fault"
[ $STATUS = 0 ] && echo "OK: every acknowledged event stored exactly once"
rm -rf "$OUT"
exit $STATUS
