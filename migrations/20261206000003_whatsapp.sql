-- WhatsApp Cloud API webhook sources (docs/metrics.md §11): where a Meta app (or a CRM that
-- forwards its bodies) posts, with the secrets that authenticate it, and each contact's current
-- conversation on that number.

-- A source: one phone number / app. `source_id` is the unguessable part of its URL
-- (/v1/whatsapp/<tenant_id>/<source_id>). The app secret is kept as given (the HMAC of every body
-- needs it); the verify token only as its SHA-256 (it is compared, never used).
create table whatsapp_sources (
    tenant_id          bigint      not null references tenants (tenant_id),
    source_id          text        not null,
    name               text        not null,
    inbox              text        not null,
    app_secret         text        not null,
    verify_token_hash  bytea       not null,
    inactivity_seconds integer     not null default 86400
        check (inactivity_seconds between 60 and 2592000),
    created_at         timestamptz not null default now(),
    primary key (tenant_id, source_id)
);

-- The conversation a contact's next message to a number of a source belongs to (docs/metrics.md §11):
-- `opened_at` is the earliest and `last_at` the latest message or status time seen in it.
create table whatsapp_contacts (
    tenant_id       bigint      not null,
    source_id       text        not null,
    -- The business number (`metadata.phone_number_id`; '' when a body has none).
    phone_number_id text        not null,
    wa_id           text        not null,
    conversation_id text        not null,
    opened_at       timestamptz not null,
    last_at         timestamptz not null,
    -- The inactivity close (a `resolved` by system at last_at + inactivity) was stored.
    closed          boolean     not null default false,
    primary key (tenant_id, source_id, phone_number_id, wa_id),
    foreign key (tenant_id, source_id) references whatsapp_sources (tenant_id, source_id)
        on delete cascade
);
-- The sweeper looks for open conversations idle past their window.
create index whatsapp_contacts_idle on whatsapp_contacts (last_at) where not closed;
