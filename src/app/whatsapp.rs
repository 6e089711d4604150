//! The WhatsApp Cloud API use cases (docs/metrics.md §11, README "WhatsApp"): sources (created,
//! listed, removed), Meta's verification handshake, a signed webhook body turned into stored
//! events, a contact's current conversation for the CRM, and conversations closed for
//! inactivity.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use super::{ingest::IngestService, limits::Limits};
use crate::{
    domain::{
        Error,
        event::{check_id, input::EventInput},
        tenant::TenantId,
        whatsapp::{self, Contact, Item},
    },
    store::{self, whatsapp::NewSource},
};

/// Default inactivity window: a conversation idle this long is closed (docs/metrics.md §11).
pub const DEFAULT_INACTIVITY_SECONDS: u32 = 86_400;
/// Bounds of the inactivity window: a minute to 30 days.
const INACTIVITY_SECONDS: std::ops::RangeInclusive<u32> = 60..=2_592_000;
/// Most sources per tenant.
const MAX_SOURCES: usize = 100;
/// Contacts placed (and locked) in one transaction.
const CONTACTS_PER_TRANSACTION: usize = 100;
/// Idle conversations closed per sweep round.
const SWEEP_PAGE: i64 = 500;

/// What a new source is made of, as the admin sent it.
#[derive(Debug, Clone, Default)]
pub struct SourceRequest {
    pub name: String,
    /// The inbox of its conversations; empty = the phone number of each message.
    pub inbox: String,
    pub app_secret: String,
    /// Empty = generate one.
    pub verify_token: String,
    /// 0 = the default.
    pub inactivity_seconds: u32,
}

/// A created source: shown once with its verify token.
#[derive(Debug, Clone)]
pub struct Created {
    pub source_id: String,
    pub verify_token: String,
}

/// What a webhook body did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Received {
    /// Items read (customer messages and receipts).
    pub items: usize,
    /// Items ignored (unknown types, missing fields).
    pub ignored: usize,
    /// Events stored now, and already stored before (a retry).
    pub accepted: u32,
    pub duplicates: u32,
}

/// WhatsApp sources and webhooks.
pub struct WhatsAppService {
    pool: PgPool,
}

fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// A secret or token: 8-512 characters without control characters.
fn check_secret(field: &str, value: &str) -> Result<(), Error> {
    let n = value.chars().count();
    if !(8..=512).contains(&n) || value.chars().any(char::is_control) {
        return Err(Error::invalid(
            field,
            "must be 8-512 characters without control characters",
        ));
    }
    Ok(())
}

impl WhatsAppService {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Creates a source (README "WhatsApp"): validated, its verify token generated when not
    /// given, and only the token's hash kept.
    pub async fn create_source(&self, tenant: TenantId, r: &SourceRequest) -> Result<Created, Error> {
        check_id("name", &r.name).map_err(Error::from)?;
        if !r.inbox.is_empty() {
            check_id("inbox", &r.inbox).map_err(Error::from)?;
        }
        check_secret("app_secret", &r.app_secret)?;
        let verify_token = if r.verify_token.is_empty() {
            random_hex(16)
        } else {
            check_secret("verify_token", &r.verify_token)?;
            r.verify_token.clone()
        };
        let inactivity = match r.inactivity_seconds {
            0 => DEFAULT_INACTIVITY_SECONDS,
            n if INACTIVITY_SECONDS.contains(&n) => n,
            n => {
                return Err(Error::invalid(
                    "inactivity_seconds",
                    format!("must be 60-2592000 (a minute to 30 days), got {n}"),
                ));
            }
        };
        if store::whatsapp::list_sources(&self.pool, tenant).await?.len() >= MAX_SOURCES {
            return Err(Error::FailedPrecondition(format!(
                "the tenant has {MAX_SOURCES} WhatsApp sources, the most it can have; delete one first"
            )));
        }
        let source_id = random_hex(16);
        store::whatsapp::create_source(
            &self.pool,
            tenant,
            &NewSource {
                source_id: &source_id,
                name: &r.name,
                inbox: &r.inbox,
                app_secret: &r.app_secret,
                verify_token_hash: &token_hash(&verify_token),
                inactivity_seconds: inactivity as i32,
            },
        )
        .await?;
        tracing::info!(tenant = tenant.0, source_id, "WhatsApp source created");
        Ok(Created {
            source_id,
            verify_token,
        })
    }

    pub async fn list_sources(&self, tenant: TenantId) -> Result<Vec<store::whatsapp::Listed>, Error> {
        store::whatsapp::list_sources(&self.pool, tenant).await
    }

    pub async fn delete_source(&self, tenant: TenantId, source_id: &str) -> Result<(), Error> {
        if store::whatsapp::delete_source(&self.pool, tenant, source_id).await? {
            tracing::info!(tenant = tenant.0, source_id, "WhatsApp source deleted");
            Ok(())
        } else {
            Err(Error::NotFound(format!("WhatsApp source {source_id:?}")))
        }
    }

    async fn source(&self, tenant: TenantId, source_id: &str) -> Result<store::whatsapp::Source, Error> {
        // An id that cannot be one is not looked up.
        if source_id.len() != 32 || !source_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::NotFound("WhatsApp source".into()));
        }
        store::whatsapp::source(&self.pool, tenant, source_id)
            .await?
            .ok_or_else(|| Error::NotFound("WhatsApp source".into()))
    }

    /// Meta's verification request: the challenge when `mode` is `subscribe` and `token` is the
    /// source's verify token; PERMISSION_DENIED otherwise.
    pub async fn verify(
        &self,
        tenant: TenantId,
        source_id: &str,
        mode: Option<&str>,
        token: Option<&str>,
        challenge: Option<&str>,
    ) -> Result<String, Error> {
        let source = self.source(tenant, source_id).await?;
        let token_ok = token.is_some_and(|t| {
            // Both are SHA-256 digests: comparing them leaks nothing about the token.
            token_hash(t) == source.verify_token_hash
        });
        if mode != Some("subscribe") || !token_ok {
            metrics::counter!("chatkpi_whatsapp_webhooks_total", "outcome" => "verify_refused").increment(1);
            return Err(Error::PermissionDenied(
                "hub.mode must be `subscribe` and hub.verify_token the source's verify token".into(),
            ));
        }
        Ok(challenge.unwrap_or_default().to_owned())
    }

    /// A webhook body (docs/metrics.md §11): checked against its signature before anything is
    /// read, read, each item placed in its contact's conversation, and the events stored; returns
    /// once they are committed.
    pub async fn receive(
        &self,
        ingest: &IngestService,
        limits: &Limits,
        tenant: TenantId,
        source_id: &str,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<Received, Error> {
        let source = self.source(tenant, source_id).await?;
        if !whatsapp::signature_valid(source.app_secret.as_bytes(), body, signature) {
            metrics::counter!("chatkpi_whatsapp_webhooks_total", "outcome" => "bad_signature").increment(1);
            tracing::warn!(
                tenant = tenant.0,
                source_id,
                signature = signature.is_some(),
                bytes = body.len(),
                "WhatsApp webhook refused: missing or wrong X-Hub-Signature-256"
            );
            return Err(Error::Unauthenticated(
                "missing or wrong X-Hub-Signature-256 (HMAC-SHA256 of the body with the app secret)",
            ));
        }
        let parsed = whatsapp::parse(body).map_err(|e| {
            metrics::counter!("chatkpi_whatsapp_webhooks_total", "outcome" => "not_a_webhook").increment(1);
            Error::invalid("body", e.to_string())
        })?;
        limits.events(tenant, parsed.items.len() * 2)?;
        let events = self.place(tenant, &source, &parsed.items).await?;
        let mut received = Received {
            items: parsed.items.len(),
            ignored: parsed.ignored,
            ..Received::default()
        };
        for chunk in events.chunks(ingest.max_batch().max(1)) {
            let outcome = ingest.ingest(tenant, chunk).await?;
            if outcome.rejected > 0 {
                // Only a value outside chatkpi's rules (a timestamp older than 2000 or more than
                // a day ahead) gets here: counted and logged, the rest is kept.
                tracing::warn!(
                    tenant = tenant.0,
                    source_id,
                    rejected = outcome.rejected,
                    "WhatsApp items rejected"
                );
            }
            received.accepted += outcome.accepted;
            received.duplicates += outcome.duplicates;
        }
        metrics::counter!("chatkpi_whatsapp_webhooks_total", "outcome" => "stored").increment(1);
        metrics::counter!("chatkpi_whatsapp_items_total", "outcome" => "read")
            .increment(received.items as u64);
        metrics::counter!("chatkpi_whatsapp_items_total", "outcome" => "ignored")
            .increment(received.ignored as u64);
        Ok(received)
    }

    /// Places every item in its contact's conversation, contact by contact in one short
    /// transaction (each contact locked), items of a contact in time order; returns the events.
    async fn place(
        &self,
        tenant: TenantId,
        source: &store::whatsapp::Source,
        items: &[Item],
    ) -> Result<Vec<EventInput>, Error> {
        let mut by_contact: BTreeMap<&Contact, Vec<&Item>> = BTreeMap::new();
        for item in items {
            by_contact.entry(item.contact()).or_default().push(item);
        }
        let inactivity = Duration::seconds(i64::from(source.inactivity_seconds));
        let inbox = Some(source.inbox.as_str()).filter(|i| !i.is_empty());
        let mut events = Vec::with_capacity(items.len() * 2);
        let mut tx = self.pool.begin().await?;
        for (n, (contact, mut items)) in by_contact.into_iter().enumerate() {
            if n > 0 && n % CONTACTS_PER_TRANSACTION == 0 {
                // A body may name thousands of contacts; each holds a lock until commit, and
                // PostgreSQL's lock table is shared by every session. Decisions already saved
                // are the ones a retry of the body takes again, so committing in parts is safe.
                tx.commit().await?;
                tx = self.pool.begin().await?;
            }
            items.sort_by_key(|i| i.at());
            let mut thread =
                store::whatsapp::lock_thread(&mut tx, tenant, &source.source_id, contact).await?;
            for item in items {
                let placement = whatsapp::place(&source.source_id, item, &mut thread, inactivity);
                if let Some((closed, at)) = &placement.closes {
                    events.push(whatsapp::close(closed, *at));
                }
                events.extend(whatsapp::events(item, &placement, inbox));
            }
            if let Some(thread) = &thread {
                store::whatsapp::save_thread(&mut tx, tenant, &source.source_id, contact, thread).await?;
            }
        }
        tx.commit().await?;
        Ok(events)
    }

    /// The contact's current conversation on the source (README "WhatsApp": how a CRM sends its
    /// own events into it), and whether it is idle past the source's window at `now` (the next
    /// message opens a new one).
    pub async fn current(
        &self,
        tenant: TenantId,
        source_id: &str,
        phone_number_id: Option<&str>,
        wa_id: &str,
        now: DateTime<Utc>,
    ) -> Result<(store::whatsapp::Current, bool), Error> {
        check_id("wa_id", wa_id).map_err(Error::from)?;
        let source = self.source(tenant, source_id).await?;
        let current = store::whatsapp::current(&self.pool, tenant, source_id, phone_number_id, wa_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("a conversation of contact {wa_id:?} on this source")))?;
        let idle =
            current.closed || current.last_at + Duration::seconds(i64::from(source.inactivity_seconds)) < now;
        Ok((current, idle))
    }

    /// Closes every conversation idle past its window at `now` that is still open (a `resolved`
    /// by the system at its last activity plus the window); returns how many were closed.
    pub async fn close_idle(&self, ingest: &IngestService, now: DateTime<Utc>) -> Result<u64, Error> {
        let mut closed = 0;
        loop {
            let idle = store::whatsapp::idle(&self.pool, now, SWEEP_PAGE).await?;
            if idle.is_empty() {
                return Ok(closed);
            }
            for i in &idle {
                if i.open {
                    ingest
                        .ingest(i.tenant_id, &[whatsapp::close(&i.conversation_id, i.close_at)])
                        .await?;
                    closed += 1;
                }
                store::whatsapp::mark_closed(&self.pool, i).await?;
            }
        }
    }
}
