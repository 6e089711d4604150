#!/usr/bin/env bash
# Ingest throughput of this build against an anchor build, in the same run (not a test): the
# machine is shared and noisy, so the ratio is the figure to read.
#
#   bench/ingest-compare.sh [CONVERSATIONS] [STREAMS] [DAYS] [ROUNDS]
#
# Defaults: 60000 conversations over 30 days (about 975,000 events), 4 streams, 2 rounds. The
# anchor is the server built from git revision ANCHOR_REV (default 4e9ffa2, the last build
# before the tenant foreign keys), in a worktree under target/, sharing this target directory's
# compiled dependencies; or ANCHOR_BIN, a server binary. Each round runs both servers, order
# alternated, each on a fresh database chatkpi_bench, fed by this build's `chatkpi-bench
# simulate` (same seed) over StreamEvents. SIM_FLAGS adds flags to simulate, e.g.
# `--leave-out waiting_on_customer` for an anchor older than that event.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
CONVERSATIONS=${1:-60000}
STREAMS=${2:-4}
DAYS=${3:-30}
ROUNDS=${4:-2}
PORT=${BENCH_PORT:-50072}
ANCHOR_REV=${ANCHOR_REV:-4e9ffa2}

build_release
CURRENT=target/anchor/chatkpi-current
mkdir -p target/anchor
cp "$BIN" "$CURRENT"
ANCHOR=${ANCHOR_BIN:-}
if [ -z "$ANCHOR" ]; then
  ANCHOR=target/anchor/chatkpi-$ANCHOR_REV
  if [ ! -x "$ANCHOR" ]; then
    SRC=target/anchor/src-$ANCHOR_REV
    [ -d "$SRC" ] || git worktree add -f "$SRC" "$ANCHOR_REV" >/dev/null
    log "building the anchor $ANCHOR_REV"
    (cd "$SRC" && CARGO_TARGET_DIR="$PWD/../.." cargo build --release --locked --quiet --bin chatkpi)
    cp target/release/chatkpi "$ANCHOR"
    # The anchor's build replaced target/release/chatkpi and its generated code (both builds
    # share the build script's output directory, and touching the protos does not make cargo
    # run it again): remove that output and build again.
    rm -rf target/release/build/chatkpi-*
    build_release
  fi
fi

run() {
  local name=$1 server=$2
  unset DATABASE_URL
  RECREATE_DATABASE=1 ensure_database chatkpi_bench
  BIN=$server
  $BIN migrate >/dev/null
  local key
  key=$($BIN tenant create --name bench | sed -n 's/^api_key=//p')
  start_server "$PORT"
  local line
  line=$($BENCH simulate --conversations "$CONVERSATIONS" --days "$DAYS" --seed 42 --start 2026-01-01 \
    --server "http://127.0.0.1:$PORT" --api-key "$key" --streams "$STREAMS" --batch 1000 \
    ${SIM_FLAGS:-} | tail -1)
  echo "$name: $line $(rss)"
  stop_server
}

log "$ROUNDS rounds of $CONVERSATIONS conversations over $DAYS days on $STREAMS streams"
for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then
    run "round $round anchor $ANCHOR_REV" "$ANCHOR"
    run "round $round current" "$CURRENT"
  else
    run "round $round current" "$CURRENT"
    run "round $round anchor $ANCHOR_REV" "$ANCHOR"
  fi
done
unset DATABASE_URL
PGPASSWORD=postgres psql -h 127.0.0.1 -U postgres -d postgres -qc "drop database if exists chatkpi_bench with (force)"
