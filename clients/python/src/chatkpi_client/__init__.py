"""Python client of chatkpi: send helpdesk conversation events, ask for KPIs.

    from chatkpi_client import Client, pb, metrics_pb
    client = Client("127.0.0.1:50051", api_key="ck_1_...")
    results = client.ingest(events)            # one EventResult per event, in order
    kpis = client.overview(from_=..., to=..., time_zone="Europe/Berlin")

The generated messages are `chatkpi_client.pb` (events.proto) and `chatkpi_client.metrics_pb`
(metrics.proto); what every field and number means is in the chatkpi repository's
docs/metrics.md.
"""
from .client import Client, IngestError, api_key_from_env
from chatkpi.v1 import events_pb2 as pb
from chatkpi.v1 import metrics_pb2 as metrics_pb

__all__ = ["Client", "IngestError", "api_key_from_env", "pb", "metrics_pb"]
