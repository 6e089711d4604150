-- Events keep their tenant without a foreign key. PostgreSQL checks a foreign key row by row,
-- each check a lookup with a key-share lock on the tenant's row: once per event, that cost
-- about 10 % of ingest throughput (BENCHMARKS.md, Ingest). An event's tenant is the tenant of
-- the API key that wrote it (the key was looked up in the same request), tenants are never
-- deleted, and `conversations` keeps its foreign key, checked once per conversation when its
-- row is first written.
alter table events drop constraint events_tenant_fk;
comment on column events.tenant_id is
    'The tenant of the API key that wrote the event (no foreign key: see migration 20261128000001).';
