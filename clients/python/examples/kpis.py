"""A week of KPIs for a chatkpi tenant, after sending one WhatsApp conversation.

    CHATKPI_API_KEY=ck_1_... python3 examples/kpis.py [host:port]
"""
import sys
from datetime import datetime, timedelta, timezone

from chatkpi_client import Client, api_key_from_env, metrics_pb, pb

target = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
now = datetime.now(timezone.utc).replace(microsecond=0)


def event(event_id, seconds_ago, **payload):
    e = pb.Event(event_id=event_id, conversation_id="py-example", **payload)
    e.occurred_at.FromDatetime(now - timedelta(seconds=seconds_ago))
    return e


with Client(target, api_key_from_env()) as client:
    results = client.ingest([
        event("py-ex-1", 120, conversation_opened=pb.ConversationOpened(
            customer_id="cust-py", channel=pb.CHANNEL_WHATSAPP)),
        event("py-ex-2", 119, message=pb.Message(message_id="py-m1", sender=pb.SENDER_CUSTOMER)),
        event("py-ex-3", 75, message=pb.Message(message_id="py-m2", sender=pb.SENDER_AGENT,
                                                agent_id="ann")),
        event("py-ex-4", 30, resolved=pb.Resolved(by=pb.RESOLVED_BY_AGENT)),
    ])
    for r in results:
        print(r.event_id, pb.EventOutcome.Name(r.outcome), r.field, r.reason)

    week = client.overview(now - timedelta(days=7), now + timedelta(seconds=1),
                           time_zone="Europe/Berlin", compare_previous=True)
    k = week.current
    print(f"conversations {k.conversations}, FRT p50 {k.first_response.p50:.0f} s, "
          f"resolved {k.resolved}")
    by_agent = client.breakdown(now - timedelta(days=7), now + timedelta(seconds=1),
                                metrics_pb.DIMENSION_AGENT)
    for row in by_agent.rows:
        print(f"  {row.value or '(no agent)'}: {row.kpis.conversations} conversations")
