-- chatkpi schema v1: tenants, API keys, the append-only event store and the per-conversation
-- facts projection. Every primary key and index starts with tenant_id so the schema distributes
-- by tenant (Citus `create_distributed_table(..., 'tenant_id')`) unchanged.

-- One customer of the service.
create table tenants (
    tenant_id  bigint generated always as identity primary key,
    name       text        not null,
    created_at timestamptz not null default now()
);

-- API keys, stored as SHA-256 of the full key text. A key reads `ck_<tenant_id>_<secret>`, so
-- authentication is a primary-key lookup on (tenant_id, key_hash).
create table api_keys (
    tenant_id  bigint      not null references tenants (tenant_id),
    key_hash   bytea       not null,
    created_at timestamptz not null default now(),
    revoked_at timestamptz,
    primary key (tenant_id, key_hash)
);

-- The event store: every accepted event, exactly once (idempotent by event_id, METRICS.md §2).
-- Append-only: rows are never updated or deleted by the service. `payload` holds the validated
-- type-specific fields as JSON (readable by analysts with plain SQL).
create table events (
    tenant_id       bigint      not null,
    event_id        text        not null,
    -- NULL for agent_status, and for a conversion sent without a conversation.
    conversation_id text,
    occurred_at     timestamptz not null,
    -- METRICS.md §2 type name: conversation_opened, message, ..., agent_status.
    kind            text        not null,
    payload         jsonb       not null,
    ingested_at     timestamptz not null default now(),
    primary key (tenant_id, event_id)
);

-- Serves the fact recomputation: all events of the conversations a batch touched.
create index events_by_conversation on events (tenant_id, conversation_id)
    where conversation_id is not null;

-- Serves KPI queries over events that belong to no conversation's facts: agent presence
-- (utilization) and conversions (conversion rate), by time.
create index events_presence_conversions on events (tenant_id, kind, occurred_at)
    where kind in ('agent_status', 'conversion');

-- Derived facts of each conversation (METRICS.md §3), recomputed from all its stored events
-- whenever one of them is accepted, so they are a function of the event set. `facts` holds the
-- full derived record (timelines included); the scalar columns repeat the facts that filters
-- and ad-hoc SQL use most.
create table conversations (
    tenant_id       bigint      not null,
    conversation_id text        not null,
    opened_at       timestamptz not null,
    channel         text        not null,
    customer_id     text,
    agent           text,
    -- open / resolved / abandoned
    state           text        not null,
    resolved_at     timestamptz,
    ended_at        timestamptz,
    last_event_at   timestamptz not null,
    facts           jsonb       not null,
    updated_at      timestamptz not null default now(),
    primary key (tenant_id, conversation_id)
) with (fillfactor = 80); -- room for HOT updates: a conversation is rewritten on every batch

-- Serves window queries by opened_at (volume, FRT, wait, missed: METRICS.md §4).
create index conversations_by_opened on conversations (tenant_id, opened_at);
