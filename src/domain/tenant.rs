//! Tenants and API keys: key format, generation and hashing.
//!
//! A key reads `ck_<tenant id>_<secret>`: the tenant id lets the store look the key up by
//! `(tenant_id, key_hash)` so the key table stays keyed by tenant first. The
//! secret is 32 random bytes, so a single SHA-256 is enough to store it safely (no password
//! stretching needed for high-entropy secrets).

use rand::RngCore;
use sha2::{Digest, Sha256};

/// A tenant's id (`tenants.tenant_id`). A newtype so a tenant id is never confused with another
/// number (a day, a count, a symbol id) in a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(pub i64);

impl std::fmt::Display for TenantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What a key may do (README, API keys). A call needs one scope: EventService `ingest`,
/// MetricsService `read` (UpdateSettings `admin`), AdminService `admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Ingest,
    Read,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Ingest, Scope::Read, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// A key's public identifier: the first 12 hex digits of its hash (listing and revoking never
/// need the secret).
pub fn key_id(hash: &[u8]) -> String {
    hex::encode(&hash[..hash.len().min(6)])
}

const PREFIX: &str = "ck_";

/// A freshly generated API key: the text shown once, and what is stored.
pub struct NewApiKey {
    /// The full key to give to the client (never stored).
    pub plaintext: String,
    /// SHA-256 of the full key.
    pub hash: Vec<u8>,
}

/// Generates a new key for `tenant`.
pub fn generate_key(tenant: TenantId) -> NewApiKey {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let plaintext = format!("{PREFIX}{tenant}_{}", hex::encode(secret));
    let hash = hash_key(&plaintext);
    NewApiKey { plaintext, hash }
}

/// SHA-256 of the full key text.
pub fn hash_key(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// The tenant a key claims to belong to, if it is well formed. The claim is only trusted after
/// the hash matches a stored key of that tenant.
pub fn parse_key(key: &str) -> Option<TenantId> {
    let rest = key.strip_prefix(PREFIX)?;
    let (tenant, secret) = rest.split_once('_')?;
    if secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    tenant.parse().ok().map(TenantId)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_back_to_their_tenant_and_differ() {
        let a = generate_key(TenantId(42));
        let b = generate_key(TenantId(42));
        assert_eq!(parse_key(&a.plaintext), Some(TenantId(42)));
        assert_ne!(a.plaintext, b.plaintext);
        assert_eq!(a.hash, hash_key(&a.plaintext));
    }

    #[test]
    fn scopes_round_trip_and_key_ids_are_short_hash_prefixes() {
        for s in Scope::ALL {
            assert_eq!(Scope::parse(s.as_str()), Some(s));
        }
        assert_eq!(Scope::parse("write"), None);
        let key = generate_key(TenantId(7));
        assert_eq!(key_id(&key.hash), hex::encode(&key.hash)[..12]);
    }

    #[test]
    fn malformed_keys_do_not_parse() {
        assert_eq!(parse_key(""), None);
        assert_eq!(parse_key("ck_1_short"), None);
        assert_eq!(parse_key(&format!("xx_1_{}", "a".repeat(64))), None);
        assert_eq!(parse_key(&format!("ck_x_{}", "a".repeat(64))), None);
    }
}
