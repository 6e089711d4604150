-- The fact derivation each tenant's conversations were last checked against when a server
-- started (startup.rs, upgrade_projection; store/events.rs, reproject_outdated): the next start
-- reads only the rows changed at or after `checked_xmin` instead of every conversation (a
-- 10 M-conversation tenant: 2-3 s of every start, before queries could be answered).
create table derivation_checks (
    tenant_id    bigint   not null primary key references tenants (tenant_id),
    derivation   smallint not null,
    -- Every row changed by a transaction below this xid was read by the check.
    checked_xmin xid8     not null
);
