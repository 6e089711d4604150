-- The dashboard questions a tenant asked most recently (overview, breakdown, time series), so
-- that a restarted server computes and keeps their totals before it reports SERVING
-- (app/warm.rs). Derived data: deleting a row loses nothing but a warm first answer. At most
-- eight per tenant (store/questions.rs keeps the most recently asked).
create table asked_questions (
    tenant_id  bigint      not null references tenants (tenant_id),
    -- md5 of the question without its window: the same dashboard question asked over a
    -- sliding window is one row, holding the latest window.
    shape      uuid        not null,
    question   jsonb       not null,
    asked_at   timestamptz not null default now(),
    primary key (tenant_id, shape)
);
