#!/usr/bin/env bash
# Alert cost benchmark (not a test): what RULES alert rules (docs/metrics.md §12) evaluated every
# 30 s cost a tenant's dashboard and the server's CPU. A tenant with CONVERSATIONS simulated
# conversations over the 30 days up to today (bulk-loaded once into chatkpi_alerts_<N>, without
# the events that have not happened yet, so sliding windows ending now read real data), then, in
# one run, ROUNDS times: SECONDS without
# rules and SECONDS with them, while the dashboard's three questions over the 30 days are asked
# every 0.25 s. Per phase: the overview's p95 and the server's CPU (cores, from /proc); the
# ratio with / without rules of both is printed.
#
# The rules: a support team's mix over 3 windows (1, 3 and 7 days) x 5 filters (none, WhatsApp,
# web chat, email, urgent priority) x the window metrics, plus live ones (backlog, unassigned,
# unanswered, SLA clocks past target) per filter, thresholds set so none fires (firing costs a
# delivery, not an evaluation). Rules asking the same question share its computation.
#
#   bench/alerts.sh [CONVERSATIONS] [RULES] [SECONDS] [ROUNDS]      defaults: 1000000 1000 90 2
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
CONVERSATIONS=${1:-1000000}
RULES=${2:-1000}
SECONDS_PER_PHASE=${3:-90}
ROUNDS=${4:-2}
PORT=${BENCH_PORT:-50078}
DB=chatkpi_alerts_$CONVERSATIONS
START=$(date -u -d "30 days ago" +%F)
FROM=${START}T00:00:00Z
TO=$(date -u -d "$START + 30 days" +%F)T00:00:00Z
build_release
unset DATABASE_URL
ensure_database "$DB"
STATE=bench-data/$DB.key
mkdir -p bench-data
if [ ! -f "$STATE" ] || [ "$(sed -n 's/^start=//p' "$STATE")" != "$START" ]; then
  RECREATE_DATABASE=1 ensure_database "$DB"
  log "bulk-loading $CONVERSATIONS conversations over the 30 days from $START"
  $BENCH bulk-load --facts-only --until-now --conversations "$CONVERSATIONS" --days 30 --seed 11 \
    --start "$START" --agents 60 --tenant-name alerts 2>/dev/null >"$STATE.out"
  psql "$DATABASE_URL" -qc "vacuum analyze" >/dev/null
  echo "start=$START" >>"$STATE.out"
  mv "$STATE.out" "$STATE"
fi
KEY=$(sed -n 's/^api_key=//p' "$STATE")
start_server "$PORT" --alert-interval-secs 30
until curl -sf -X POST "http://127.0.0.1:$PORT/chatkpi.v1.AdminService/ListAlertRules" \
  -H "authorization: Bearer $KEY" -H 'content-type: application/json' -d '{}' >/dev/null; do sleep 0.5; done
SAMPLES=$(mktemp)
CPU=$(mktemp)

# cpu_while LABEL CMD...: runs CMD and records the server's CPU (cores) over it.
cpu_while() {
  local label=$1
  shift
  local hz ticks0 ticks1 t0 t1
  hz=$(getconf CLK_TCK)
  ticks0=$(awk '{print $14 + $15}' "/proc/$SERVER/stat")
  t0=$(date +%s.%N)
  "$@"
  ticks1=$(awk '{print $14 + $15}' "/proc/$SERVER/stat")
  t1=$(date +%s.%N)
  python3 -c "print(f'$label,{($ticks1 - $ticks0) / $hz / ($t1 - $t0):.3f}')" | tee -a "$CPU"
}

rules() {
  python3 - "$PORT" "$KEY" "$RULES" "$1" <<'PY'
import json, sys, urllib.request
port, key, n, action = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
def call(method, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/chatkpi.v1.AdminService/{method}",
        data=json.dumps(body).encode(), headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
    return json.load(urllib.request.urlopen(req))
if action == "delete":
    for r in call("ListAlertRules", {}).get("rules", []):
        call("DeleteAlertRule", {"ruleId": r["ruleId"]})
    sys.exit(0)
filters = [{}, {"channels": ["CHANNEL_WHATSAPP"]}, {"channels": ["CHANNEL_WEBCHAT"]},
           {"channels": ["CHANNEL_EMAIL"]}, {"priorities": ["PRIORITY_URGENT"]}]
window = ["first_response.p90", "first_response.p50", "human_first_response.p90", "resolution.p90",
          "reply.p95", "wait.mean", "missed_rate", "delivery_rate", "read_rate", "sla.breach_rate",
          "conversations", "messages_failed", "missed", "abandoned"]
live = ["backlog", "unassigned", "open_unanswered", "backlog_age.max", "sla.active_breached"]
made = 0
while made < n:
    for f in filters:
        for w in (86400, 3 * 86400, 7 * 86400):
            for m in window:
                if made == n: break
                below = m in ("delivery_rate", "read_rate")
                call("CreateAlertRule", {"rule": {"name": f"r{made}", "metric": m, "windowSeconds": w,
                     "filters": f, "comparison": "ALERT_COMPARISON_BELOW" if below else "ALERT_COMPARISON_ABOVE",
                     "threshold": -1 if below else 1e12, "minItems": 10,
                     "destinations": ["https://hooks.example.com/chatkpi"]}})
                made += 1
        for m in live:
            if made == n: break
            call("CreateAlertRule", {"rule": {"name": f"r{made}", "metric": m, "filters": f,
                 "comparison": "ALERT_COMPARISON_ABOVE", "threshold": 1e12,
                 "destinations": ["https://hooks.example.com/chatkpi"]}})
            made += 1
print(f"{made} rules created")
PY
}

RUN=$(date +%s)
for round in $(seq 1 "$ROUNDS"); do
  for config in none rules; do
    if [ "$config" = rules ]; then rules create; else rules delete; fi
    log "round $round: $config"
    cpu_while "$config" peak_rss_while $BENCH live --server "http://127.0.0.1:$PORT" --api-key "$KEY" \
      --from "$FROM" --to "$TO" --rate 0 --seconds "$SECONDS_PER_PHASE" --label "$config" \
      --samples "$SAMPLES" --run "$RUN-$round-$config"
  done
done
summarize "$SAMPLES"
python3 - "$SAMPLES" "$CPU" <<'PY'
import sys
sys.path.insert(0, "bench")
from samples import load, rank
s, cpu = load(sys.argv[1]), load(sys.argv[2])
def p95(v):
    return rank(v, .95)
none, rules = s["none:overview"], s["rules:overview"]
print(f"overview p95 with rules / without = {p95(rules) / p95(none):.2f}x ({p95(rules):.1f} / {p95(none):.1f} ms)")
for k, v in cpu.items():
    print(f"server CPU {k}: " + ", ".join(f"{c:.2f}" for c in v) + " cores")
print(f"CPU the rules add: {sum(cpu['rules']) / len(cpu['rules']) - sum(cpu['none']) / len(cpu['none']):.2f} cores on average")
PY
rss
stop_server
rm -f "$SAMPLES" "$CPU"
