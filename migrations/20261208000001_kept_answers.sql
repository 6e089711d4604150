-- Answers to the dashboard questions (overview, breakdown, time series), kept with what they
-- were computed from, so that a restarted server (or one whose cache let the tenant go) answers
-- a question asked before without loading the tenant's days, when nothing the answer read has
-- changed since (app/kpis/kept.rs, README "Restarts are quick"). Derived data: deleting a row
-- loses nothing but a quick answer. At most 32 per tenant (the most recently written).
create table kept_answers (
    tenant_id  bigint      not null references tenants (tenant_id),
    -- SHA-256 of the build that computed the answer and of the whole question (its window
    -- included): another build never reads it.
    question   bytea       not null,
    -- The answer holds while the tenant has no conversation record changed (change_xid) and no
    -- presence or conversion event written (ingest_xid) at or after this xid...
    as_of_xmin xid8        not null,
    -- ...still this many erasures (tenants.erasures)...
    erasures   bigint      not null,
    -- ...and settings of this SHA-256 (store/settings.rs, fingerprint).
    settings   bytea       not null,
    -- The answer as JSON (exact: floats are written to round-trip).
    body       bytea       not null,
    written_at timestamptz not null default now(),
    primary key (tenant_id, question)
);

comment on table kept_answers is
    'Answers of dashboard questions with the state they hold for: derived data, at most 32 per '
    'tenant (the most recently written), deleted by an erasure of the tenant''s customers.';
