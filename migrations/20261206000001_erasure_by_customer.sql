-- Erasure finds every event that names a customer through an index, and rebuilds only the days
-- that held the customer's conversations (docs/metrics.md §2, README Erasure).

-- The customer an event names: `conversation_opened.customer_id` (any of a conversation's
-- openings, not only the first) and `conversion.customer_id`; NULL for every other type.
alter table events add column customer_id text;

update events
set customer_id = coalesce(payload -> 'conversation_opened' ->> 'customer_id',
                           payload -> 'conversion' ->> 'customer_id')
where kind in ('conversation_opened', 'conversion');

create index events_by_customer on events (tenant_id, customer_id) where customer_id is not null;
comment on index events_by_customer is
    'Erasure: every event that names a customer (store/tenants.rs erase_customer).';
comment on column events.customer_id is
    'The customer the event names (conversation_opened, conversion), else NULL: found by erasure.';

-- One row per erasure of a tenant, numbered by the tenant's erasure counter: which day segments
-- lost conversations and whether conversions were deleted. Query caches of every replica read
-- the rows after the counter they saw and rebuild those days only. Nothing here identifies the
-- customer.
create table erasures (
    tenant_id   bigint      not null references tenants (tenant_id),
    erasure     bigint      not null,
    days        date[]      not null,
    conversions bigint      not null,
    erased_at   timestamptz not null default now(),
    primary key (tenant_id, erasure)
);
comment on table erasures is
    'Per erasure: the segment days rebuilt and the conversions deleted (app/cache.rs reads them).';
