#!/usr/bin/env bash
# Noisy-neighbour benchmark (not a test): tenant `noisy` (NOISY simulated conversations over
# January 2026) asks questions never asked before (windows of 1 hour to 30 days at random
# offsets, half of them filtered, half comparing the window before) from CLIENTS connections as
# fast as its query rate limit allows, while tenant `quiet` (QUIET conversations) asks its
# 30-day Berlin overview every 0.25 s; quiet and noisy phases of SECONDS alternate ROUNDS times
# in one run. Both tenants live in database chatkpi_neighbours (bulk-loaded once).
#
#   bench/neighbours.sh [NOISY] [QUIET] [SECONDS] [ROUNDS] [CLIENTS]   defaults: 1000000 100000 30 3 8
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
NOISY=${1:-1000000}
QUIET=${2:-100000}
SECONDS_PER_PHASE=${3:-30}
ROUNDS=${4:-3}
CLIENTS=${5:-8}
PORT=${BENCH_PORT:-50075}
build_release
bulk_tenant chatkpi_neighbours quiet "$QUIET" 3
QUIET_KEY=$KEY
bulk_tenant chatkpi_neighbours noisy "$NOISY" 7
NOISY_KEY=$KEY
SAMPLES=$(mktemp)
start_server "$PORT" ${SERVE_FLAGS:-}
peak_rss_while $BENCH neighbours --server "http://127.0.0.1:$PORT" --quiet-key "$QUIET_KEY" \
  --noisy-key "$NOISY_KEY" --from 2026-01-01T00:00:00Z --to 2026-01-31T00:00:00Z \
  --seconds "$SECONDS_PER_PHASE" --rounds "$ROUNDS" --noisy-clients "$CLIENTS" --samples "$SAMPLES"
summarize "$SAMPLES"
python3 - "$SAMPLES" <<'PY'
import math, sys
s = {"quiet:overview": [], "noisy:overview": []}
for line in open(sys.argv[1]):
    k, ms = line.strip().split(",")
    s[k].append(float(ms))
def p(v, q):
    v = sorted(v); return v[max(1, math.ceil(q * len(v))) - 1]
print(f"quiet tenant's overview beside the noisy one / alone: p50 {p(s['noisy:overview'], .5) / p(s['quiet:overview'], .5):.2f}x, "
      f"p95 {p(s['noisy:overview'], .95) / p(s['quiet:overview'], .95):.2f}x")
PY
rss
stop_server
rm -f "$SAMPLES"
