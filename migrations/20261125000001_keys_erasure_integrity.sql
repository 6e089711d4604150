-- Scoped API keys, customer erasure, and a schema that states what the code relies on.

-- What a key may do (README, API keys). Keys made before scopes existed keep every scope.
alter table api_keys
    add column scopes text[] not null default array['ingest', 'read', 'admin'],
    add column label text not null default '',
    add constraint api_keys_scopes_known
        check (cardinality(scopes) > 0 and scopes <@ array['ingest', 'read', 'admin']);

-- Bumped by every customer erasure: query caches of every replica compare it on each refresh
-- and rebuild the tenant's data when it moved (a deletion leaves no changed row to see).
alter table tenants add column erasures bigint not null default 0;

-- Every row belongs to a tenant. (NOT VALID then VALIDATE: existing rows are checked without
-- holding a write-blocking lock for the whole scan.)
alter table events
    add constraint events_tenant_fk foreign key (tenant_id) references tenants (tenant_id) not valid;
alter table events validate constraint events_tenant_fk;
alter table conversations
    add constraint conversations_tenant_fk foreign key (tenant_id) references tenants (tenant_id) not valid;
alter table conversations validate constraint conversations_tenant_fk;

-- Closed sets of values (METRICS.md §1-§3 spellings, as the domain writes them).
alter table events add constraint events_kind_known check (kind in (
    'conversation_opened', 'message', 'message_status', 'assigned', 'conversation_updated',
    'tags_changed', 'handoff', 'resolved', 'reopened', 'abandoned', 'survey_response',
    'survey_sent', 'conversion', 'agent_status'));
alter table conversations add constraint conversations_state_known
    check (state in ('open', 'resolved', 'abandoned'));
alter table conversations add constraint conversations_channel_known check (channel in (
    'whatsapp', 'webchat', 'email', 'sms', 'messenger', 'instagram', 'telegram', 'voice', 'other'));
alter table conversations add constraint conversations_derivation_known
    check (derivation >= 1);

-- What each index serves.
comment on index events_by_conversation is
    'Ingest: read back every event of the conversations a batch touches (store/events.rs LOAD_EVENTS); erasure.';
comment on index events_presence_conversions is
    'Query cache: presence and conversion events written since a refresh (store/segments.rs side_events).';
comment on index conversations_by_change is
    'Query cache: conversations written since a refresh (store/segments.rs changed_since).';
comment on index conversations_by_day is
    'Query cache: a day segment''s rows and the per-day bounds (store/segments.rs days, day rows).';
