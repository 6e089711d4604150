-- The sweeper of idle WhatsApp conversations (store/whatsapp.rs `idle`) reads each source's
-- oldest open contacts: index them by source, keyed by tenant first like every table.
drop index whatsapp_contacts_idle;
create index whatsapp_contacts_idle on whatsapp_contacts (tenant_id, source_id, last_at) where not closed;
