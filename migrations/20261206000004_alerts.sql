-- Alert rules, their episodes and deliveries (docs/metrics.md §12).

-- A rule: its spec (domain/alert.rs RuleSpec as JSON) and the secret its notices are signed with.
create table alert_rules (
    tenant_id      bigint      not null references tenants (tenant_id),
    rule_id        bigint      generated always as identity,
    spec           jsonb       not null,
    signing_secret text        not null,
    created_at     timestamptz not null default now(),
    updated_at     timestamptz not null default now(),
    primary key (tenant_id, rule_id)
);

-- Where each rule's episodes stand (domain/alert.rs State as JSON), written only by the replica
-- that holds the evaluation lock, on the connection that holds it.
create table alert_state (
    tenant_id bigint not null,
    rule_id   bigint not null,
    state     jsonb  not null,
    primary key (tenant_id, rule_id),
    foreign key (tenant_id, rule_id) references alert_rules (tenant_id, rule_id) on delete cascade
);

-- Every notice (firing, reminder, resolved), in the order they were decided: what WatchAlerts
-- streams and deliveries carry. `seq` orders notices over all tenants.
create table alert_notices (
    tenant_id  bigint      not null,
    notice_id  bigint      generated always as identity,
    rule_id    bigint      not null,
    episode    bigint      not null,
    kind       text        not null check (kind in ('firing', 'reminder', 'resolved')),
    at         timestamptz not null,
    document   jsonb       not null,
    primary key (tenant_id, notice_id)
);
create index alert_notices_seq on alert_notices (notice_id);

-- One delivery of a notice to one destination, retried with backoff until delivered or given up.
create table alert_deliveries (
    tenant_id       bigint      not null,
    delivery_id     bigint      generated always as identity,
    notice_id       bigint      not null,
    rule_id         bigint      not null,
    destination     text        not null,
    status          text        not null default 'pending'
        check (status in ('pending', 'delivered', 'failed')),
    attempts        integer     not null default 0,
    next_attempt_at timestamptz,
    created_at      timestamptz not null default now(),
    primary key (tenant_id, delivery_id)
);
create index alert_deliveries_due on alert_deliveries (next_attempt_at) where status = 'pending';

-- Every attempt of a delivery.
create table alert_attempts (
    tenant_id   bigint      not null,
    delivery_id bigint      not null,
    attempt     integer     not null,
    at          timestamptz not null,
    http_status integer,
    error       text,
    primary key (tenant_id, delivery_id, attempt)
);
