-- KPI queries: change tracking for incremental refresh of the in-memory query dataset, and
-- per-tenant settings (business hours, targets).

-- The transaction that last wrote a conversation's facts / inserted an event. A reader that
-- remembers the xmin of its previous snapshot re-reads exactly the rows written since
-- (`change_xid >= previous xmin`), including those of transactions that were still running
-- then, so no change is missed whatever the commit order (docs/architecture in README).
alter table conversations add column change_xid xid8 not null default pg_current_xact_id();
alter table events add column ingest_xid xid8 not null default pg_current_xact_id();

-- Serves the incremental refresh of conversation facts.
create index conversations_by_change on conversations (tenant_id, change_xid);

-- Serves the incremental refresh of presence and conversions (the events that never belong to
-- a conversation's facts).
drop index events_presence_conversions;
create index events_presence_conversions on events (tenant_id, ingest_xid)
    where kind in ('agent_status', 'conversion');

-- Business hours and targets of a tenant, as validated JSON documents (see store/settings.rs).
create table tenant_settings (
    tenant_id      bigint      not null primary key references tenants (tenant_id),
    business_hours jsonb,
    targets        jsonb       not null default '{}',
    updated_at     timestamptz not null default now()
);
