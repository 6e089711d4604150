-- Compact conversation records and day segments, read by the query engine (docs/architecture.md).
--
-- A conversation's facts are now stored as a compact binary record (domain/record.rs) instead
-- of JSON, and every conversation belongs to one day segment: the UTC day of its opened_at when
-- it was first stored (`segment_day`, never changed afterwards, so a conversation lives in
-- exactly one segment). Queries read the segments their window needs; `segments` keeps a
-- persisted copy of each segment so a restarted replica loads a day in one read.

alter table conversations
    add column record bytea,
    add column segment_day date,
    -- The earliest event of the conversation: every item of it lies in
    -- [active_from, last_event_at].
    add column active_from timestamptz,
    -- When the conversation stopped being open for good ('infinity' while it is open): no
    -- backlog membership or handling time after it.
    add column live_until timestamptz,
    -- The fact derivation that wrote the row: 1 = JSON facts (before this migration), 2 = binary
    -- records. Rows below the current one are recomputed from their events at startup.
    add column derivation smallint not null default 1;

alter table conversations alter column facts drop not null;

update conversations
set segment_day = (opened_at at time zone 'UTC')::date,
    active_from = least(opened_at, coalesce((facts ->> 'first_event_at')::timestamptz, opened_at)),
    live_until = case when state = 'open' then 'infinity' else coalesce(ended_at, last_event_at) end;

alter table conversations
    alter column segment_day set not null,
    alter column active_from set not null,
    alter column live_until set not null;

-- Served no query (windows are read through segments).
drop index conversations_by_opened;

-- Serves loading one day segment, and the per-day bounds a tenant's first query reads (the
-- included columns let PostgreSQL answer that aggregate from the index alone).
create index conversations_by_day on conversations (tenant_id, segment_day)
    include (opened_at, active_from, last_event_at, live_until);

-- Every upsert changes the indexed change_xid, so no update is HOT: free space reserved for HOT
-- updates was wasted.
alter table conversations set (fillfactor = 100);

-- Persisted day segments (domain/segment/snapshot.rs). Derived data: deleting a row loses
-- nothing, the segment is rebuilt from the conversation records.
create table segments (
    tenant_id   bigint      not null references tenants (tenant_id),
    segment_day date        not null,
    -- The segment holds every change of transactions older than this xmin; rows written at or
    -- after it are read again from conversations (change_xid >= built_xmin).
    built_xmin  xid8        not null,
    row_count   integer     not null,
    body        bytea       not null,
    written_at  timestamptz not null default now(),
    primary key (tenant_id, segment_day)
);

-- Bodies are a few megabytes of already compact bytes: store them out of line without
-- compression, so loading one is a plain read.
alter table segments alter column body set storage external;
