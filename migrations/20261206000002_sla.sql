-- Service levels (docs/metrics.md §10): a tenant's SLA policies, and the event that marks a
-- conversation as waiting on the customer.

-- The tenant's ordered SLA policies (store/settings.rs, domain/sla.rs Policy as JSON).
alter table tenant_settings add column sla_policies jsonb not null default '[]';
comment on column tenant_settings.sla_policies is
    'Ordered SLA policies (docs/metrics.md §10): the first that covers a clock governs it.';

-- The new event type.
alter table events drop constraint events_kind_known;
alter table events add constraint events_kind_known check (kind in (
    'conversation_opened', 'message', 'message_status', 'assigned', 'conversation_updated',
    'tags_changed', 'handoff', 'resolved', 'reopened', 'abandoned', 'survey_response',
    'survey_sent', 'conversion', 'agent_status', 'waiting_on_customer'));
