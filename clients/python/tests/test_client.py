"""The Python client against a real chatkpi server, started by these tests.

Environment: DATABASE_URL (default the local chatkpi_test database, as scripts/test.sh sets it)
and CHATKPI_BIN (default the repository's target/debug/chatkpi, built by `cargo test`).
"""
import os
import pathlib
import socket
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone

import grpc
import pytest

from chatkpi_client import Client, IngestError, metrics_pb, pb

REPO = pathlib.Path(__file__).resolve().parents[3]
BIN = os.environ.get("CHATKPI_BIN", str(REPO / "target" / "debug" / "chatkpi"))
DATABASE_URL = os.environ.get("DATABASE_URL",
                              "postgres://postgres:postgres@127.0.0.1:5432/chatkpi_test")
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port):
    return subprocess.Popen(
        [BIN, "serve", "--listen", f"127.0.0.1:{port}", "--warmup-days", "0"],
        env={**os.environ, "DATABASE_URL": DATABASE_URL, "RUST_LOG": "warn"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(process):
    process.terminate()
    process.wait(timeout=30)


def wait_serving(port):
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=60)
    channel.close()


@pytest.fixture(scope="module")
def api_key():
    out = subprocess.run([BIN, "tenant", "create", "--name", "python-client"],
                         env={**os.environ, "DATABASE_URL": DATABASE_URL},
                         check=True, capture_output=True, text=True).stdout
    return next(l.split("=", 1)[1] for l in out.splitlines() if l.startswith("api_key="))


@pytest.fixture(scope="module")
def server():
    port = free_port()
    process = start_server(port)
    try:
        wait_serving(port)
        yield f"127.0.0.1:{port}"
    finally:
        stop(process)


def event(event_id, conversation, seconds, **payload):
    e = pb.Event(event_id=event_id, conversation_id=conversation, **payload)
    e.occurred_at.FromDatetime(T0 + timedelta(seconds=seconds))
    return e


def conversation(name, start, answer_after):
    """Opened at `start`, a customer message, an agent answer `answer_after` s later."""
    return [
        event(f"{name}-o", name, start, conversation_opened=pb.ConversationOpened(
            customer_id=f"cust-{name}", channel=pb.CHANNEL_WHATSAPP)),
        event(f"{name}-c", name, start, message=pb.Message(
            message_id=f"{name}-c", sender=pb.SENDER_CUSTOMER)),
        event(f"{name}-a", name, start + answer_after, message=pb.Message(
            message_id=f"{name}-a", sender=pb.SENDER_AGENT, agent_id="ann")),
    ]


def test_ingest_gives_one_result_per_event_and_the_kpis_follow(server, api_key):
    # First responses of 10, 20 and 60 s: mean 30, median 20. Event 4 (an agent message
    # without its agent) is rejected; batches of 2 check that indexes span the whole input.
    events = conversation("a", 0, 10) + conversation("b", 100, 20) + conversation("c", 200, 60)
    events.insert(4, event("bad", "b", 150, message=pb.Message(
        message_id="bad", sender=pb.SENDER_AGENT)))
    with Client(server, api_key) as client:
        results = client.ingest(events, batch_size=2)
        assert [r.index for r in results] == list(range(len(events)))
        assert [r.event_id for r in results] == [e.event_id for e in events]
        rejected = [r for r in results if r.outcome == pb.EVENT_OUTCOME_REJECTED]
        assert [(r.index, r.field) for r in rejected] == [(4, "events[0].message.agent_id")]
        assert sum(r.outcome == pb.EVENT_OUTCOME_ACCEPTED for r in results) == 9

        kpis = client.overview(T0 - timedelta(hours=1), T0 + timedelta(hours=1)).current
        assert kpis.conversations == 3
        assert kpis.first_response.count == 3
        assert kpis.first_response.mean == pytest.approx(30.0)
        assert kpis.first_response.p50 == pytest.approx(20.0)

        # Sending the same events again stores nothing twice.
        again = client.ingest(events, batch_size=5)
        assert sum(r.outcome == pb.EVENT_OUTCOME_DUPLICATE for r in again) == 9
        assert client.overview(T0 - timedelta(hours=1),
                               T0 + timedelta(hours=1)).current.conversations == 3


def test_ingest_waits_for_a_server_that_is_not_up_yet(api_key):
    # The client starts sending before the server listens: UNAVAILABLE is retried until the
    # server (started 1.5 s later) takes the batch.
    port = free_port()
    started = []
    timer = threading.Timer(1.5, lambda: started.append(start_server(port)))
    timer.start()
    try:
        began = time.monotonic()
        with Client(f"127.0.0.1:{port}", api_key) as client:
            results = client.ingest(conversation("late", 3 * 86_400, 5), attempts=12)
        assert time.monotonic() - began >= 1.5
        assert [r.outcome for r in results] == [pb.EVENT_OUTCOME_ACCEPTED] * 3
    finally:
        timer.join()
        for process in started:
            stop(process)


def test_a_wrong_key_fails_at_once_without_retrying(server):
    with Client(server, "ck_1_" + "0" * 64) as client:
        began = time.monotonic()
        with pytest.raises(IngestError) as failure:
            client.ingest(conversation("x", 0, 1))
        assert failure.value.error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert time.monotonic() - began < 5


def test_sla_policies_judge_first_responses_and_list_the_breaches(server, api_key):
    # One policy, first response within 15 s (calendar): d answered in 10 s (achieved), e in 20 s
    # (breached by 5), f in 60 s (breached by 45); g is still unanswered. A day later than the
    # other tests' conversations, so their clocks are outside the window.
    day = 86_400
    events = (conversation("d", day, 10) + conversation("e", day + 100, 20)
              + conversation("f", day + 200, 60) + conversation("g", day + 300, 10_000)[:2])
    policy = metrics_pb.SlaPolicy(name="fast", first_response=metrics_pb.SlaTarget(seconds=15))
    start, end = T0 + timedelta(seconds=day), T0 + timedelta(seconds=day + 3600)
    with Client(server, api_key) as client:
        settings = client.set_sla_policies([policy])
        assert [p.name for p in settings.sla_policies] == ["fast"]
        client.ingest(events)
        first = client.overview(start, end).current.sla.first_response
        assert (first.achieved, first.breached) == (1, 2)
        assert first.breach_rate == pytest.approx(200 / 3)
        assert first.over_target.mean == pytest.approx(25.0)  # (5 + 45) / 2
        breached = [(r.conversation_id, r.sla_breaches[0].actual_seconds)
                    for r in client.sla_breaches(start, end)]
        assert breached == [("e", 20.0), ("f", 60.0)]
        # 100 s after g's message its clock has run 100 s of 15: 85 s over.
        status = client.sla_status(at=T0 + timedelta(seconds=day + 400))
        assert (status.first_response.active, status.first_response.active_breached) == (1, 1)
        assert [(r.conversation_id, r.time_left_seconds) for r in status.at_risk] == [("g", -85.0)]
        client.set_sla_policies([])


def test_the_crm_finds_the_conversation_a_whatsapp_webhook_opened(server, api_key):
    import hashlib
    import hmac
    import json
    import urllib.request

    def post(path, body, headers):
        request = urllib.request.Request(f"http://{server}{path}", data=body,
                                         headers={"content-type": "application/json", **headers})
        with urllib.request.urlopen(request) as answer:
            return json.load(answer)

    secret = "python-client-app-secret"
    created = post("/chatkpi.v1.AdminService/CreateWhatsAppSource",
                   json.dumps({"name": "python", "appSecret": secret}).encode(),
                   {"authorization": f"Bearer {api_key}"})
    at = int(T0.timestamp())
    body = json.dumps({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{
        "field": "messages", "value": {
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
            "messages": [{"from": "16505551234", "id": "wamid.py1", "timestamp": str(at),
                          "type": "text", "text": {"body": "hi"}}]}}]}]}).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    stored = post(created["path"], body, {"x-hub-signature-256": signature})
    assert (stored["items"], stored["accepted"]) == (1, 2)  # the opening and the message
    with Client(server, api_key) as client:
        found = client.whatsapp_conversation(created["sourceId"], "16505551234")
        assert found.conversation_id.startswith(f"wa:{created['sourceId']}:")
        assert found.conversation_id.endswith(f":{at}")
        assert found.opened_at.ToDatetime(tzinfo=timezone.utc) == T0
        with pytest.raises(grpc.RpcError) as missing:
            client.whatsapp_conversation(created["sourceId"], "10000000000")
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert client.firing_alerts() == []
