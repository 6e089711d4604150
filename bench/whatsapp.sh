#!/usr/bin/env bash
# WhatsApp webhook latency (not a test): how fast a signed 100-item body (50 customer messages of
# 50 contacts and 50 receipts, docs/metrics.md §11) is answered 200, i.e. stored, while CLIENTS
# webhook senders post at once for SECONDS; and, in the same run and on the same server and
# database, the same events sent as JSON IngestEvents batches by as many clients (the anchor: the
# webhook's own cost is the ratio). Every body is new (new wamids), as Meta's are, except in a last
# phase that replays the first phase's bodies (Meta's retries: nothing new is stored). Prints p50 /
# p95 / p99 per door, the ratio of the p99s and the server's peak RSS. Meta's timeout is a few
# seconds; Meta retries what is not answered 200.
#
#   bench/whatsapp.sh [SECONDS] [CLIENTS]      defaults: 30 4
#
# Uses a fresh database chatkpi_whatsapp_bench on the local Postgres (dropped at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
SECONDS_PER_PHASE=${1:-30}
CLIENTS=${2:-4}
PORT=${BENCH_PORT:-50077}
build_release
unset DATABASE_URL
RECREATE_DATABASE=1 ensure_database chatkpi_whatsapp_bench
$BIN migrate >/dev/null
STATE=$($BIN tenant create --name whatsapp-bench)
KEY=$(sed -n 's/^api_key=//p' <<<"$STATE")
TENANT=$(sed -n 's/^tenant_id=//p' <<<"$STATE")
SECRET=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
SOURCE=$($BIN tenant add-whatsapp --tenant "$TENANT" --name bench --app-secret "$SECRET" | sed -n 's/^path=//p')
start_server "$PORT"
trap 'stop_server; psql "postgres://postgres:postgres@127.0.0.1:5432/postgres" -qc "drop database if exists chatkpi_whatsapp_bench" >/dev/null 2>&1 || true' EXIT

peak_rss_while python3 - "$PORT" "$SOURCE" "$SECRET" "$KEY" "$SECONDS_PER_PHASE" "$CLIENTS" <<'PY'
import hashlib, hmac, http.client, json, math, sys, threading, time
port, path, secret, key, seconds, clients = sys.argv[1], sys.argv[2], sys.argv[3].encode(), sys.argv[4], float(sys.argv[5]), int(sys.argv[6])
now = int(time.time())

def webhook_body(client, n):
    n = f"{phase}{n:06d}"
    msgs, statuses = [], []
    for i in range(50):
        wa = f"1{client:02d}{n}{i:02d}"
        msgs.append({"from": wa, "id": f"wamid.in.{client}.{n}.{i}", "timestamp": str(now), "type": "text",
                     "text": {"body": "hello"}})
        statuses.append({"id": f"wamid.out.{client}.{n}.{i}", "status": "delivered", "timestamp": str(now + 5),
                         "recipient_id": wa, "pricing": {"billable": True, "pricing_model": "CBP", "category": "service"}})
    value = {"messaging_product": "whatsapp",
             "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
             "messages": msgs, "statuses": statuses}
    return json.dumps({"object": "whatsapp_business_account",
                       "entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}]}).encode()

def ingest_body(client, n):
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    events = []
    for i in range(50):
        conv = f"anchor-{client}-{n}-{i}"
        events.append({"eventId": f"a-open-{client}-{n}-{i}", "conversationId": conv, "occurredAt": stamp,
                       "conversationOpened": {"customerId": f"c{client}{n}{i}", "channel": "CHANNEL_WHATSAPP",
                                              "initiatedBy": "INITIATOR_CUSTOMER"}})
        events.append({"eventId": f"a-msg-{client}-{n}-{i}", "conversationId": conv, "occurredAt": stamp,
                       "message": {"messageId": f"a-m-{client}-{n}-{i}", "sender": "SENDER_CUSTOMER"}})
        events.append({"eventId": f"a-st-{client}-{n}-{i}", "conversationId": conv, "occurredAt": stamp,
                       "messageStatus": {"messageId": f"a-o-{client}-{n}-{i}", "status": "MESSAGE_STATUS_DELIVERED",
                                         "impliesMessage": True, "category": "service"}})
    return json.dumps({"events": events}).encode()

phase = 0

def run(door, replay_of=None):
    global phase
    phase += 1
    if replay_of is not None:
        phase_now, phase = phase, replay_of
    samples, errors = [], []
    def worker(client):
        conn = http.client.HTTPConnection("127.0.0.1", int(port))
        n, end = 0, time.time() + seconds
        while time.time() < end:
            if door == "webhook":
                body = webhook_body(client, n)
                sig = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
                headers = {"content-type": "application/json", "x-hub-signature-256": sig}
                target = path
            else:
                body = ingest_body(client, n)
                headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
                target = "/chatkpi.v1.EventService/IngestEvents"
            t0 = time.perf_counter()
            conn.request("POST", target, body=body, headers=headers)
            r = conn.getresponse(); r.read()
            ms = (time.perf_counter() - t0) * 1000
            (samples if r.status == 200 else errors).append(ms if r.status == 200 else r.status)
            n += 1
        # The server limits connections per address: give this one back.
        conn.close()
    threads = [threading.Thread(target=worker, args=(c + (100 if door == "ingest" else 0),)) for c in range(clients)]
    [t.start() for t in threads]; [t.join() for t in threads]
    if replay_of is not None:
        phase = phase_now
        door = "webhook replays (Meta's retries of the first phase's bodies)"
    s = sorted(samples)
    rank = lambda p: s[max(1, math.ceil(p * len(s))) - 1]
    print(f"{door}: {len(s)} bodies of 100 items ({len(s) / seconds:.1f}/s, {len(errors)} not 200: {sorted(set(errors))}) "
          f"p50={rank(.5):.1f} p95={rank(.95):.1f} p99={rank(.99):.1f} max={s[-1]:.1f} ms")
    return rank(.99)

print(f"{clients} clients at once, {seconds:.0f} s per door")
webhook = run("webhook")
anchor = run("ingest")
webhook2 = run("webhook")
run("webhook", replay_of=1)
print(f"webhook p99 / IngestEvents p99 (150 events per batch, same run) = {max(webhook, webhook2) / anchor:.2f}x")
PY
rss
