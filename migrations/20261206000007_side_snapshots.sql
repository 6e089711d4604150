-- Persisted presence changes and conversions of a tenant (engine/side.rs): what the query cache
-- loads on its first refresh of a tenant instead of reading every `agent_status` and
-- `conversion` event as JSON, plus the events written since `built_xmin`. Derived data:
-- deleting a row loses nothing. Erasure deletes the tenant's row (it may name the customer);
-- a row written under an older erasure counter is never loaded.
create table side_snapshots (
    tenant_id   bigint      not null references tenants (tenant_id),
    -- Complete for every transaction older than this xmin; events written at or after it are
    -- read again (events.ingest_xid >= built_xmin, index events_presence_conversions).
    built_xmin  xid8        not null,
    -- The tenant's erasure counter when the state it was written from was read.
    erasures    bigint      not null,
    body        bytea       not null,
    written_at  timestamptz not null default now(),
    primary key (tenant_id)
);

-- Already compact bytes: out of line, uncompressed, so loading one is a plain read.
alter table side_snapshots alter column body set storage external;
