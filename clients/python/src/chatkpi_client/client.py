"""The chatkpi client: an API key on every call, batched ingest with per-event results and
retries on UNAVAILABLE, and typed KPI queries."""
import os
import random
import time
from datetime import datetime, timedelta, timezone
from typing import Iterable, Iterator, List, Optional, Sequence

import grpc

from chatkpi.v1 import events_pb2 as pb
from chatkpi.v1 import events_pb2_grpc as events_grpc
from chatkpi.v1 import metrics_pb2 as metrics_pb
from chatkpi.v1 import metrics_pb2_grpc as metrics_grpc

# Statuses after which resending the same batch is safe and useful: the server or its database
# is restarting, or a limit asked us to slow down. Event ids make a resent event DUPLICATE.
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


def api_key_from_env(name: str = "CHATKPI_API_KEY") -> str:
    """The API key from the environment, with a clear error when it is missing."""
    key = os.environ.get(name, "").strip()
    if not key.startswith("ck_"):
        raise RuntimeError(f"set {name} to a chatkpi API key (ck_<tenant>_<secret>)")
    return key


class IngestError(Exception):
    """A batch failed for good (not retryable, or still failing after every attempt)."""

    def __init__(self, batch_index: int, error: grpc.RpcError):
        super().__init__(f"batch {batch_index} failed: {error.code().name}: {error.details()}")
        self.batch_index = batch_index
        self.error = error


class Client:
    """A connection to one chatkpi server for one tenant (the API key's).

    target: "host:port". tls: use TLS (root_certificates: PEM bytes of a private CA).
    """

    def __init__(self, target: str, api_key: str, tls: bool = False,
                 root_certificates: Optional[bytes] = None, timeout: float = 30.0):
        if tls:
            channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates))
        else:
            channel = grpc.insecure_channel(target)
        self.channel = channel
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {api_key}"),)
        self.events = events_grpc.EventServiceStub(channel)
        self.metrics = metrics_grpc.MetricsServiceStub(channel)

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- ingest -------------------------------------------------------------------------------

    def ingest(self, events: Iterable[pb.Event], batch_size: int = 1000, attempts: int = 8,
               first_pause: float = 0.2) -> List[pb.EventResult]:
        """Sends events in batches of `batch_size` (at most the server's limit, 1000 by default)
        and returns one result per event, in input order, with `index` relative to the whole
        input. A batch that fails with UNAVAILABLE or RESOURCE_EXHAUSTED is sent again after a
        pause (doubling, with jitter, honouring the server's retry pushback) up to `attempts`
        times; the event ids make that safe. Other errors raise IngestError at once."""
        results: List[pb.EventResult] = []
        batch: List[pb.Event] = []
        batch_index = 0
        for event in events:
            batch.append(event)
            if len(batch) == batch_size:
                results.extend(self._send(batch, batch_index, len(results), attempts, first_pause))
                batch, batch_index = [], batch_index + 1
        if batch:
            results.extend(self._send(batch, batch_index, len(results), attempts, first_pause))
        return results

    def _send(self, batch: Sequence[pb.Event], batch_index: int, offset: int, attempts: int,
              first_pause: float) -> List[pb.EventResult]:
        pause = first_pause
        for attempt in range(1, attempts + 1):
            try:
                reply = self.events.IngestEvents(pb.IngestEventsRequest(events=batch),
                                                 metadata=self._metadata, timeout=self.timeout)
            except grpc.RpcError as error:
                if error.code() not in RETRYABLE or attempt == attempts:
                    raise IngestError(batch_index, error) from error
                time.sleep(_pushback(error) or pause * (1 + random.random() / 2))
                pause = min(pause * 2, 10.0)
                continue
            for result in reply.results:
                result.index += offset
            return list(reply.results)
        raise AssertionError("unreachable")

    # --- queries ------------------------------------------------------------------------------

    def query(self, from_: datetime, to: datetime, time_zone: str = "UTC",
              business_hours: bool = False, channels: Sequence[int] = (),
              agents: Sequence[str] = (), tags: Sequence[str] = (),
              teams: Sequence[str] = (), inboxes: Sequence[str] = ()) -> metrics_pb.Query:
        """A Query message: the half-open window [from_, to), a time zone and filters."""
        q = metrics_pb.Query(time_zone=time_zone, business_hours=business_hours)
        getattr(q, "from").FromDatetime(_utc(from_))  # `from` is a Python keyword
        q.to.FromDatetime(_utc(to))
        q.filters.channels.extend(channels)
        q.filters.agents.extend(agents)
        q.filters.tags.extend(tags)
        q.filters.teams.extend(teams)
        q.filters.inboxes.extend(inboxes)
        return q

    def overview(self, from_: datetime, to: datetime, compare_previous: bool = False,
                 **query) -> metrics_pb.GetOverviewResponse:
        """Every KPI for the window (docs/metrics.md §5)."""
        request = metrics_pb.GetOverviewRequest(query=self.query(from_, to, **query),
                                                compare_previous=compare_previous)
        return self.metrics.GetOverview(request, metadata=self._metadata, timeout=self.timeout)

    def breakdown(self, from_: datetime, to: datetime, dimension: int,
                  **query) -> metrics_pb.GetBreakdownResponse:
        """The same KPIs per value of a dimension (metrics_pb.DIMENSION_AGENT, ...)."""
        request = metrics_pb.GetBreakdownRequest(query=self.query(from_, to, **query),
                                                 dimension=dimension)
        return self.metrics.GetBreakdown(request, metadata=self._metadata, timeout=self.timeout)

    def time_series(self, from_: datetime, to: datetime, granularity: int,
                    **query) -> metrics_pb.GetTimeSeriesResponse:
        """The same KPIs per calendar bucket (metrics_pb.GRANULARITY_DAY, ...)."""
        request = metrics_pb.GetTimeSeriesRequest(query=self.query(from_, to, **query),
                                                  granularity=granularity)
        return self.metrics.GetTimeSeries(request, metadata=self._metadata, timeout=self.timeout)

    def backlog(self, at: Optional[datetime] = None) -> metrics_pb.GetBacklogResponse:
        """Open, unassigned and unanswered conversations at an instant (default now)."""
        request = metrics_pb.GetBacklogRequest()
        if at is not None:
            request.at.FromDatetime(_utc(at))
        return self.metrics.GetBacklog(request, metadata=self._metadata, timeout=self.timeout)

    # --- service levels (docs/metrics.md §10) -------------------------------------------------

    def set_sla_policies(self, policies: Sequence[metrics_pb.SlaPolicy]) -> metrics_pb.GetSettingsResponse:
        """Replaces the tenant's SLA policies (in order; an empty list removes them). Admin key."""
        request = metrics_pb.UpdateSettingsRequest(
            sla_policies=metrics_pb.SlaPolicies(policies=list(policies)))
        return self.metrics.UpdateSettings(request, metadata=self._metadata,
                                           timeout=self.timeout).settings

    def sla_status(self, at: Optional[datetime] = None, limit: int = 20,
                   **filters) -> metrics_pb.GetSlaStatusResponse:
        """Running SLA clocks at an instant (default now) and the `limit` that breach soonest.
        Filters as for `query` (agents: the assignee at the instant)."""
        when = _utc(at) if at is not None else datetime.now(timezone.utc)
        request = metrics_pb.GetSlaStatusRequest(
            query=self.query(when - timedelta(days=1), when, **filters), limit=limit)
        request.at.FromDatetime(when)
        return self.metrics.GetSlaStatus(request, metadata=self._metadata, timeout=self.timeout)

    def sla_breaches(self, from_: datetime, to: datetime,
                     **query) -> Iterator[metrics_pb.ConversationFacts]:
        """The conversations with an SLA clock breached in the window, each with its breaches
        (`row.sla_breaches`: metric, policy, target and actual seconds)."""
        request = metrics_pb.ListConversationsRequest(
            query=self.query(from_, to, **query), kpi=metrics_pb.DRILL_DOWN_SLA_BREACHED)
        return self.metrics.ListConversations(request, metadata=self._metadata,
                                              timeout=self.timeout)

    def whatsapp_conversation(self, source_id: str, wa_id: str,
                              phone_number_id: Optional[str] = None
                              ) -> pb.FindWhatsAppConversationResponse:
        """The conversation a WhatsApp contact's messages go to now (docs/metrics.md §11): the
        id to send the CRM's own events of that chat to (assignments, agent messages with the
        wamid as message_id, resolutions). NOT_FOUND when the contact never wrote."""
        request = pb.FindWhatsAppConversationRequest(source_id=source_id, wa_id=wa_id)
        if phone_number_id is not None:
            request.phone_number_id = phone_number_id
        return self.events.FindWhatsAppConversation(request, metadata=self._metadata,
                                                    timeout=self.timeout)

    def firing_alerts(self) -> List[metrics_pb.FiringAlert]:
        """The alert rules firing now (docs/metrics.md §12)."""
        return list(self.metrics.GetFiringAlerts(metrics_pb.GetFiringAlertsRequest(),
                                                 metadata=self._metadata,
                                                 timeout=self.timeout).alerts)

    def watch_alerts(self) -> Iterator[metrics_pb.AlertNotice]:
        """Every alert notice (firing, reminder, resolved) of the tenant from now on; runs until
        the iterator is dropped or `cancel()`ed."""
        return self.metrics.WatchAlerts(metrics_pb.WatchAlertsRequest(), metadata=self._metadata)


def _utc(t: datetime) -> datetime:
    if t.tzinfo is None:
        raise ValueError("use timezone-aware datetimes (e.g. datetime(..., tzinfo=timezone.utc))")
    return t.astimezone(timezone.utc)


def _pushback(error: grpc.RpcError) -> Optional[float]:
    """The server's `grpc-retry-pushback-ms` hint, in seconds."""
    for key, value in (error.trailing_metadata() or ()):
        if key == "grpc-retry-pushback-ms":
            try:
                return int(value) / 1000.0
            except ValueError:
                return None
    return None

