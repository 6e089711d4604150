#!/usr/bin/env bash
# Before / after benchmark (not a test): does a change make anything else slower? This build's
# server and another build's (OLD_BIN, e.g. built in a git worktree) alternate ROUNDS times on
# the same tenant: the query benchmark's (bench/query.sh CONVERSATIONS loads it into
# chatkpi_qbench_<N> and must have run first), each build on its own copy of that database
# (an older build refuses a database migrated by a newer one). Each round starts each server
# afresh, without warm-up and with nothing kept from an earlier round (asked questions, kept
# answers and persisted kept totals deleted), and times:
#   1. load: the first 30-day Berlin overview (the 30 day snapshots loaded, then computed);
#   2. settled: the same overview ITERATIONS times (p50 / p95 over the rounds);
#   3. never asked: the 30-day overview, breakdown by agent and daily series in UTC,
#      America/New_York and Asia/Tokyo, one call each (computed from rows);
# and after the first and each never-asked question, the server's CPU milliseconds until it is
# idle again (`background_after_*`: kept totals and snapshots written), waited for before the
# next question so that each build's background work is counted there, not in the next time.
# Then p50 / p95 per build and kind, and new / old per kind (same run: this machine is noisy).
#
#   bench/before-after.sh OLD_BIN [CONVERSATIONS] [ITERATIONS] [ROUNDS]   defaults: - 1000000 50 2
#
# Environment: CACHE_BYTES sets both servers' --cache-bytes (default: the servers').
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
OLD_BIN=${1:?usage: bench/before-after.sh OLD_BIN [CONVERSATIONS] [ITERATIONS] [ROUNDS]}
CONVERSATIONS=${2:-1000000}
ITERATIONS=${3:-50}
ROUNDS=${4:-2}
PORT=${BENCH_PORT:-50074}
DB=chatkpi_qbench_$CONVERSATIONS
STATE=bench-data/$DB.key
FROM=2026-01-01T00:00:00Z
TO=2026-01-31T00:00:00Z
SERVE_FLAGS=(--warmup-days 0)
[ -n "${CACHE_BYTES:-}" ] && SERVE_FLAGS+=(--cache-bytes "$CACHE_BYTES")
[ -x "$OLD_BIN" ] || { log "OLD_BIN $OLD_BIN is not an executable"; exit 1; }
[ -f "$STATE" ] || { log "no $STATE: run bench/query.sh $CONVERSATIONS first"; exit 1; }

build_release
NEW_BIN=$BIN
KEY=$(sed -n 's/^api_key=//p' "$STATE")
unset DATABASE_URL
ensure_database "$DB"
BASE_URL=$DATABASE_URL
# Copies made afresh from the loaded database (no connection may be open on it meanwhile).
for build in new old; do
  psql "$BASE_URL" -qc "drop database if exists ${DB}_$build" >/dev/null
  psql "$BASE_URL" -qc "create database ${DB}_$build template $DB" >/dev/null
done
# The old build refuses migrations it does not know (those missing from its checkout's
# migrations/, OLD_MIGRATIONS): its copy goes back to its own schema by dropping the tables they
# created, which works only for migrations that create tables and nothing else (checked).
OLD_MIGRATIONS=${OLD_MIGRATIONS:-$(dirname "$OLD_BIN")/../../migrations}
[ -d "$OLD_MIGRATIONS" ] || { log "no $OLD_MIGRATIONS: set OLD_MIGRATIONS to the old build's migrations/"; exit 1; }
ONE_SQL=$(mktemp)
OLD_URL="${BASE_URL%/*}/${DB}_old"
python3 - "$OLD_MIGRATIONS" migrations/*.sql >"$ONE_SQL" <<'PY'
import os, re, sys
known = set(os.listdir(sys.argv[1]))
for path in sys.argv[2:]:
    name = os.path.basename(path)
    if name in known:
        continue
    sql = re.sub(r"--[^\n]*", "", open(path).read())
    tables = []
    for statement in filter(None, (t.strip().lower() for t in sql.split(";"))):
        if m := re.match(r"create table (\w+)", statement):
            tables.append(m.group(1))
        elif not re.match(r"comment on |alter table \w+ alter column \w+ set storage \w+$", statement):
            sys.exit(f"{name} does more than create tables: the old build cannot run on this database")
    print("".join(f"drop table {t} cascade;" for t in reversed(tables)) +
          f"delete from _sqlx_migrations where version = {name.split('_')[0]};")
PY
psql "$OLD_URL" -q -v ON_ERROR_STOP=1 -f "$ONE_SQL" >/dev/null
SAMPLES=$(mktemp)
ONE=$(mktemp)
# ask BUILD KIND ZONE QUERIES ITERATIONS [--no-warmup]: times the questions, samples labelled
# BUILD_KIND_<query>.
ask() {
  local build=$1 kind=$2 zone=$3 queries=$4 iterations=$5
  shift 5
  : >"$ONE"
  $BENCH bench-queries --server "http://127.0.0.1:$PORT" --api-key "$KEY" --from $FROM --to $TO \
    --time-zone "$zone" --queries "$queries" --iterations "$iterations" --samples "$ONE" "$@" >/dev/null
  sed "s/^/${build}_${kind}_/" "$ONE" >>"$SAMPLES"
}

# settle: waits until the server is idle (under 20 ms of CPU in 500 ms, at most 30 s) and
# prints the CPU milliseconds it spent until then: what it did in the background after an answer
# (writing kept totals and snapshots), which would otherwise land on the next question's time.
settle() {
  local hz t0 t1 before after
  hz=$(getconf CLK_TCK)
  before=$(awk '{print $14 + $15}' "/proc/$SERVER/stat")
  t1=$before
  for _ in $(seq 1 60); do
    t0=$t1
    sleep 0.5
    t1=$(awk '{print $14 + $15}' "/proc/$SERVER/stat")
    [ $(((t1 - t0) * 1000 / hz)) -lt 20 ] && break
  done
  echo $(((t1 - before) * 1000 / hz))
}

PEAKS=()
for round in $(seq 1 "$ROUNDS"); do
  for build in new old; do
    log "round $round of $ROUNDS: $build build"
    export DATABASE_URL="${BASE_URL%/*}/${DB}_$build"
    # Nothing kept from an earlier round: every question of this round is asked afresh.
    for table in asked_questions kept_answers kept_totals; do
      if [ -n "$(psql "$DATABASE_URL" -Atqc "select to_regclass('$table')")" ]; then
        psql "$DATABASE_URL" -qc "delete from $table" >/dev/null
      fi
    done
    [ $build = new ] && BIN=$NEW_BIN || BIN=$OLD_BIN
    start_server "$PORT" "${SERVE_FLAGS[@]}"
    ask $build load Europe/Berlin overview 1 --no-warmup --retry-while-loading
    echo "${build}_background_after_load,$(settle)" >>"$SAMPLES"
    ask $build settled Europe/Berlin overview "$ITERATIONS"
    for zone in UTC America/New_York Asia/Tokyo; do
      for query in overview breakdown_agent series_day; do
        ask $build never "$zone" $query 1 --no-warmup
        echo "${build}_background_after_never_$query,$(settle)" >>"$SAMPLES"
      done
    done
    PEAKS+=("$build round $round: $(rss)")
    stop_server
  done
done
BIN=$NEW_BIN
summarize "$SAMPLES"
printf '%s\n' "${PEAKS[@]}"
python3 - "$SAMPLES" <<'PY'
import sys
sys.path.insert(0, "bench")
from samples import load, rank
s = load(sys.argv[1])
for kind in sorted(k[4:] for k in s if k.startswith("new_")):
    new, old = s["new_" + kind], s.get("old_" + kind)
    if old and kind.startswith("background"):
        print(f"{kind}: new {sum(new) / len(new):.0f} ms, old {sum(old) / len(old):.0f} ms of CPU on average")
    elif old:
        print(f"new / old {kind}: p50 {rank(new, .5) / rank(old, .5):.2f}x, p95 {rank(new, .95) / rank(old, .95):.2f}x")
PY
rm -f "$SAMPLES" "$ONE" "$ONE_SQL"
