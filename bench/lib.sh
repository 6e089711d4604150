# Shared helpers of the benchmark scripts (sourced). Benchmarks are not tests: they print
# figures for BENCHMARKS.md.

. scripts/lib.sh

BIN=target/release/chatkpi
BENCH=target/release/chatkpi-bench

# build_release: the service and chatkpi-bench, optimized.
build_release() {
  ensure_protoc
  cargo build --release --locked --quiet
}

# start_server PORT [extra serve flags...]: starts `chatkpi serve` in the background on
# 127.0.0.1:PORT against $DATABASE_URL, sets SERVER to its pid and waits until it listens.
# A server left listening on PORT (by a run that stopped early) would answer in place of this
# build's: refuse. Every server started here is stopped when the script exits, however it exits
# (a script's own EXIT trap replaces this one and must stop them itself).
STARTED_SERVERS=()
trap 'for s in "${STARTED_SERVERS[@]}"; do kill "$s" 2>/dev/null || true; done' EXIT
start_server() {
  local port=$1
  shift
  if (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    log "port $port is already in use (a server left from an earlier run?): stop it first"
    return 1
  fi
  CHATKPI_LISTEN=127.0.0.1:$port RUST_LOG=${RUST_LOG:-warn} $BIN serve "$@" &
  SERVER=$!
  STARTED_SERVERS+=("$SERVER")
  for _ in $(seq 1 200); do
    (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.05
  done
  log "server did not start on port $port"
  return 1
}

# stop_server: SIGTERM and wait.
stop_server() {
  kill -TERM "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
}

# rss: the server's current and peak resident memory (MiB).
rss() {
  awk '/VmRSS/ {r=$2} /VmHWM/ {h=$2} END {printf "server RSS %.0f MiB (peak %.0f MiB)\n", r/1024, h/1024}' "/proc/$SERVER/status"
}

# summarize FILE: p50/p95/max per kind of `kind,ms` samples, and chatkpi / DuckDB for the
# overview when both are there.
summarize() {
  python3 - "$1" <<'PY'
import sys
sys.path.insert(0, "bench")
from samples import load, rank
samples = load(sys.argv[1])
for kind, v in samples.items():
    print(f"{kind}: n={len(v)} p50={rank(v, .5):.1f} ms p95={rank(v, .95):.1f} ms max={max(v):.1f} ms")
if "overview" in samples and "duckdb_overview" in samples:
    o, d = samples["overview"], samples["duckdb_overview"]
    print(f"chatkpi / DuckDB overview: p50 {rank(o, .5) / rank(d, .5):.2f}x, p95 {rank(o, .95) / rank(d, .95):.2f}x")
PY
}

# bulk_tenant DB NAME CONVERSATIONS SEED: a tenant NAME with CONVERSATIONS simulated conversations
# over January 2026 in database DB (facts, presence and conversions; loaded once and kept in
# bench-data/DB.NAME.key). Exports DATABASE_URL for DB; sets KEY and TENANT.
bulk_tenant() {
  local db=$1 name=$2 conversations=$3 seed=$4
  local state=bench-data/$db.$name.key
  mkdir -p bench-data
  unset DATABASE_URL
  ensure_database "$db"
  if [ ! -f "$state" ]; then
    log "bulk-loading tenant $name: $conversations conversations over 30 days (facts only)"
    $BENCH bulk-load --facts-only --conversations "$conversations" --days 30 --seed "$seed" \
      --start 2026-01-01 --agents 60 --tenant-name "$name" 2>/dev/null >"$state.out"
    psql "$DATABASE_URL" -qc "vacuum analyze" >/dev/null
    mv "$state.out" "$state"
  fi
  KEY=$(sed -n 's/^api_key=//p' "$state")
  TENANT=$(sed -n 's/^tenant_id=//p' "$state")
}

# peak_rss_while CMD...: runs CMD while sampling the server's RSS every 200 ms; prints the peak
# RSS of that stretch (MB) after CMD's own output.
peak_rss_while() {
  local peak=0 rss watcher
  ( while kill -0 "$SERVER" 2>/dev/null; do
      rss=$(awk '/VmRSS/ {print $2}' "/proc/$SERVER/status" 2>/dev/null || echo 0)
      [ "${rss:-0}" -gt "$peak" ] && peak=$rss && echo "$peak" >"$PEAK_FILE"
      sleep 0.2
    done ) &
  watcher=$!
  "$@"
  kill "$watcher" 2>/dev/null || true
  wait "$watcher" 2>/dev/null || true
  awk '{printf "peak server RSS during it: %.0f MiB\n", $1/1024}' "$PEAK_FILE"
  echo 0 >"$PEAK_FILE"
}
PEAK_FILE=$(mktemp)
echo 0 >"$PEAK_FILE"

# fresh_copy DB: (re)creates database DB from its template DB_base, so that every run starts
# from the same data (runs that write into a tenant would otherwise change it for the next).
# The template is made from DB the first time. Exports DATABASE_URL for DB.
fresh_copy() {
  local db=$1 base=${1}_base
  export PGPASSWORD=postgres
  local q="psql -h 127.0.0.1 -U postgres -d postgres -qAtc"
  if [ "$($q "select 1 from pg_database where datname = '$base'")" != 1 ]; then
    $q "create database \"$base\" template \"$db\"" >/dev/null
  fi
  $q "drop database if exists \"$db\" with (force)" >/dev/null
  $q "create database \"$db\" template \"$base\"" >/dev/null
  export DATABASE_URL="postgres://postgres:postgres@127.0.0.1:5432/$db"
}
