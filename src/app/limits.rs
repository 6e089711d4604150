//! What one tenant or one client address may use: events and KPI calls per second (token
//! buckets, `governor`), open streams and watchers, failed key look-ups per minute. A call
//! beyond a rate or stream limit gets RESOURCE_EXHAUSTED with the time after which a retry can
//! succeed. Failed authentications are throttled per client address and key, so a misconfigured
//! client behind a shared address (NAT, proxy, ingress) locks out nobody else; only an address
//! trying many different wrong keys has its unknown keys refused without a look-up.

use std::{
    collections::HashMap,
    hash::Hash,
    net::IpAddr,
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::Duration,
};

use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};

use crate::domain::{Error, tenant::TenantId};

/// How long failed authentications are remembered.
const AUTH_WINDOW: Duration = Duration::from_secs(60);
/// Failed look-ups one address may make with different keys of one tenant, as a multiple of its
/// limit per key (a client guessing that tenant's keys). Counted per tenant so that clients of
/// other tenants behind the same address (a NAT, a proxy, an ingress) are not locked out.
const AUTH_TENANT_FACTOR: u32 = 10;
/// Failed look-ups one address may make with all keys together, as a multiple of its limit per
/// key: bounds the look-ups of a client cycling through tenant ids.
const AUTH_ADDRESS_FACTOR: u32 = 100;

/// The limits' settings.
#[derive(Debug, Clone)]
pub struct LimitSettings {
    pub events_per_sec: u32,
    pub queries_per_sec: u32,
    /// Open StreamEvents of one tenant.
    pub ingest_streams_per_tenant: usize,
    /// Open ListConversations and WatchOverview of one tenant (a pool apart from ingest, so
    /// readers never starve the tenant's writers).
    pub read_streams_per_tenant: usize,
    /// Open WatchOverview of one tenant (part of its read streams).
    pub watchers_per_tenant: usize,
    /// How long a server stream may wait for its client to read (`grpc::Guarded`).
    pub stream_stall: Duration,
    pub auth_failures_per_minute: u32,
}

/// Rate limiters and stream counters.
pub struct Limits {
    events: DefaultKeyedRateLimiter<TenantId>,
    queries: DefaultKeyedRateLimiter<TenantId>,
    /// Failed look-ups per (address, key hash), per (address, claimed tenant) and per address;
    /// an entry lives a minute after its last failure.
    auth_failures: moka::sync::Cache<(IpAddr, [u8; 16]), u32>,
    auth_failures_of_tenant: moka::sync::Cache<(IpAddr, TenantId), u32>,
    auth_failures_of_address: moka::sync::Cache<IpAddr, u32>,
    max_auth_failures: u32,
    ingest_streams: Slots<TenantId>,
    read_streams: Slots<TenantId>,
    watchers: Slots<TenantId>,
    stream_stall: Duration,
    clock: DefaultClock,
}

/// The kinds of open streams a tenant is limited in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// StreamEvents.
    Ingest,
    /// ListConversations.
    Read,
    /// WatchOverview (a read stream, and a watcher).
    Watcher,
}

fn per_second_with_double_burst(n: u32) -> Quota {
    let n = NonZeroU32::new(n.max(1)).expect("at least one");
    let burst = n.saturating_mul(NonZeroU32::new(2).expect("two"));
    Quota::per_second(n).allow_burst(burst)
}

/// Failure counts that forget an entry a minute after its last failure (100,000 entries at most,
/// the least used dropped first).
fn failure_counts<K: std::hash::Hash + Eq + Send + Sync + 'static>() -> moka::sync::Cache<K, u32> {
    moka::sync::Cache::builder()
        .max_capacity(100_000)
        .time_to_live(AUTH_WINDOW)
        .build()
}

fn count_failure<K: std::hash::Hash + Eq + Clone + Send + Sync + 'static>(
    counts: &moka::sync::Cache<K, u32>,
    key: K,
) {
    counts
        .entry(key)
        .and_upsert_with(|n| n.map_or(1, |n| n.into_value().saturating_add(1)));
}

impl Limits {
    pub fn new(s: &LimitSettings) -> Self {
        Self {
            events: RateLimiter::keyed(per_second_with_double_burst(s.events_per_sec)),
            queries: RateLimiter::keyed(per_second_with_double_burst(s.queries_per_sec)),
            auth_failures: failure_counts(),
            auth_failures_of_tenant: failure_counts(),
            auth_failures_of_address: failure_counts(),
            max_auth_failures: s.auth_failures_per_minute.max(1),
            ingest_streams: Slots::new(s.ingest_streams_per_tenant),
            read_streams: Slots::new(s.read_streams_per_tenant),
            watchers: Slots::new(s.watchers_per_tenant),
            stream_stall: s.stream_stall,
            clock: DefaultClock::default(),
        }
    }

    /// How long a server stream may wait for its client to read.
    pub fn stream_stall(&self) -> Duration {
        self.stream_stall
    }

    /// Takes `n` events from the tenant's budget.
    pub fn events(&self, tenant: TenantId, n: usize) -> Result<(), Error> {
        let Some(n) = u32::try_from(n).ok().and_then(NonZeroU32::new) else {
            return Ok(());
        };
        match self.events.check_key_n(&tenant, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(self.exhausted(
                "events",
                "the tenant's event rate limit is reached",
                not_until.wait_time_from(self.clock.now()),
            )),
            Err(insufficient) => Err(Error::ResourceExhausted {
                limit: "events",
                message: format!(
                    "a batch of {n} events is larger than the tenant's burst of {} events; send smaller batches",
                    insufficient.0
                ),
                retry_after: None,
            }),
        }
    }

    /// Takes one KPI call from the tenant's budget.
    pub fn query(&self, tenant: TenantId) -> Result<(), Error> {
        self.queries.check_key(&tenant).map_err(|not_until| {
            self.exhausted(
                "queries",
                "the tenant's query rate limit is reached",
                not_until.wait_time_from(self.clock.now()),
            )
        })
    }

    /// Whether the key whose hash is `key_hash`, claiming `tenant`, may be looked up for `ip`:
    /// not after [`LimitSettings::auth_failures_per_minute`] failed look-ups of that key from that
    /// address, nor after ten times as many of different keys of that tenant, nor after a hundred
    /// times as many of any keys, until a minute passes without one. Keys known to be valid are
    /// not looked up, so they keep working from that address; so do other tenants' keys.
    pub fn auth_lookup_allowed(
        &self,
        ip: Option<IpAddr>,
        tenant: TenantId,
        key_hash: &[u8],
    ) -> Result<(), Error> {
        let Some(ip) = ip else { return Ok(()) };
        let over =
            |n: Option<u32>, factor: u32| n.unwrap_or(0) >= self.max_auth_failures.saturating_mul(factor);
        let refused = if over(self.auth_failures.get(&(ip, fingerprint(key_hash))), 1) {
            "too many failed authentications with this key from this address; it was not checked, retry in a minute"
        } else if over(
            self.auth_failures_of_tenant.get(&(ip, tenant)),
            AUTH_TENANT_FACTOR,
        ) {
            "too many failed authentications with different keys of this tenant from this address; its unknown keys are not checked, retry in a minute"
        } else if over(self.auth_failures_of_address.get(&ip), AUTH_ADDRESS_FACTOR) {
            "too many failed authentications from this address; unknown keys are not checked, retry in a minute"
        } else {
            return Ok(());
        };
        metrics::counter!("chatkpi_limit_rejections_total", "limit" => "auth_failures").increment(1);
        Err(Error::Unauthenticated(refused))
    }

    /// Records a failed look-up of the key `key_hash`, claiming `tenant`, from `ip`.
    pub fn auth_failed(&self, ip: Option<IpAddr>, tenant: TenantId, key_hash: &[u8]) {
        let Some(ip) = ip else { return };
        count_failure(&self.auth_failures, (ip, fingerprint(key_hash)));
        count_failure(&self.auth_failures_of_tenant, (ip, tenant));
        count_failure(&self.auth_failures_of_address, ip);
    }

    /// A slot for an open stream of `tenant` (released when dropped).
    pub fn open_stream(&self, tenant: TenantId, kind: StreamKind) -> Result<StreamSlot, Error> {
        let watcher = match kind {
            StreamKind::Watcher => Some(self.watchers.take(tenant).ok_or_else(|| {
                self.exhausted_now("watchers", "the tenant has too many open WatchOverview streams")
            })?),
            _ => None,
        };
        let stream = match kind {
            StreamKind::Ingest => self.ingest_streams.take(tenant).ok_or_else(|| {
                self.exhausted_now(
                    "ingest_streams",
                    "the tenant has too many open StreamEvents streams",
                )
            })?,
            StreamKind::Read | StreamKind::Watcher => self.read_streams.take(tenant).ok_or_else(|| {
                self.exhausted_now(
                    "read_streams",
                    "the tenant has too many open ListConversations / WatchOverview streams",
                )
            })?,
        };
        Ok(StreamSlot {
            _stream: stream,
            _watcher: watcher,
        })
    }

    fn exhausted(&self, limit: &'static str, what: &str, wait: Duration) -> Error {
        metrics::counter!("chatkpi_limit_rejections_total", "limit" => limit).increment(1);
        Error::ResourceExhausted {
            limit,
            message: format!("{what}; retry after {} ms", wait.as_millis().max(1)),
            retry_after: Some(wait),
        }
    }

    fn exhausted_now(&self, limit: &'static str, what: &str) -> Error {
        metrics::counter!("chatkpi_limit_rejections_total", "limit" => limit).increment(1);
        Error::ResourceExhausted {
            limit,
            message: format!("{what}; close one and retry"),
            retry_after: None,
        }
    }
}

/// The first 16 bytes of a key's hash: enough to tell keys apart.
fn fingerprint(key_hash: &[u8]) -> [u8; 16] {
    let mut f = [0u8; 16];
    let n = key_hash.len().min(16);
    f[..n].copy_from_slice(&key_hash[..n]);
    f
}

/// Counters of open things per key, bounded.
struct Slots<K: Hash + Eq + Copy> {
    max: usize,
    open: Arc<Mutex<HashMap<K, usize>>>,
}

impl<K: Hash + Eq + Copy + Send + 'static> Slots<K> {
    fn new(max: usize) -> Self {
        Self {
            max,
            open: Arc::default(),
        }
    }

    fn take(&self, key: K) -> Option<Slot<K>> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot {
            key,
            open: self.open.clone(),
        })
    }
}

/// One taken slot; dropping it frees it.
struct Slot<K: Hash + Eq + Copy> {
    key: K,
    open: Arc<Mutex<HashMap<K, usize>>>,
}

impl<K: Hash + Eq + Copy> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// An open stream's slots (stream, and watcher for WatchOverview); kept by the stream.
pub struct StreamSlot {
    _stream: Slot<TenantId>,
    _watcher: Option<Slot<TenantId>>,
}
