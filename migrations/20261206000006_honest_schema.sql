-- The schema says what is: columns nothing reads are dropped, and the tables' comments replace
-- what earlier migrations' comments got wrong (`events` is not append-only: erasure deletes
-- from it; conversations no longer carry a JSON copy of their facts).

-- Read by nothing since the facts became a binary record (20261124000001): `facts` has been
-- NULL on every row since then; `channel`, `agent` and `customer_id` were written on every
-- upsert for ad-hoc SQL only (the record has them; `customer_id` is personal data better kept
-- in one place, the events, where erasure finds it by index).
alter table conversations
    drop column facts,
    drop column channel,
    drop column agent,
    drop column customer_id;

-- Never read: a segment's body states its own row count.
alter table segments drop column row_count;

comment on table events is
    'Every accepted event of a tenant, exactly once (idempotent by event_id, docs/metrics.md §2); '
    'payload holds the validated type-specific fields as JSON. Rows are never updated; they are '
    'deleted only by erasure (AdminService.EraseCustomer), which removes every event naming the '
    'customer (events_by_customer) and every event of their conversations.';
comment on table conversations is
    'Derived per-conversation facts (docs/metrics.md §3), recomputed from all the conversation''s '
    'stored events whenever one of them is accepted, so they are a function of the event set. '
    'record is the facts in the query engine''s binary record format; the other columns place '
    'the row in a day segment (segment_day, opened_at, active_from, last_event_at, live_until), '
    'tell the query cache what changed (change_xid) and the WhatsApp webhook whether a '
    'conversation is closed (state, resolved_at, ended_at).';
comment on column conversations.derivation is
    'Version of the fact derivation that wrote the row; `chatkpi reproject` rewrites older rows.';
comment on table segments is
    'Persisted day segments of the query engine: derived data, rebuilt from conversations.record '
    'when missing or damaged; a row holds every change of transactions older than built_xmin.';
comment on table tenant_settings is
    'A tenant''s business hours, holidays, targets and SLA policies as validated JSON documents '
    '(docs/metrics.md §7, §8, §10).';
