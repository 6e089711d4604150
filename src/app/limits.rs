//! What one tenant or one client address may use: events and KPI calls per second (token
//! buckets, `governor`), open streams and watchers, failed authentications per minute. A call
//! beyond a limit gets RESOURCE_EXHAUSTED with the time after which a retry can succeed.

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

/// The limits' settings.
#[derive(Debug, Clone)]
pub struct LimitSettings {
    pub events_per_sec: u32,
    pub queries_per_sec: u32,
    pub streams_per_tenant: usize,
    pub watchers_per_tenant: usize,
    pub auth_failures_per_minute: u32,
}

/// Rate limiters and stream counters.
pub struct Limits {
    events: DefaultKeyedRateLimiter<TenantId>,
    queries: DefaultKeyedRateLimiter<TenantId>,
    /// Failed authentications per address; an entry lives a minute after its last failure.
    auth_failures: moka::sync::Cache<IpAddr, u32>,
    max_auth_failures: u32,
    streams: Slots<TenantId>,
    watchers: Slots<TenantId>,
    clock: DefaultClock,
}

/// The kinds of open streams a tenant is limited in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// StreamEvents, ListConversations.
    Stream,
    /// WatchOverview (counted as a stream too).
    Watcher,
}

fn per_second_with_double_burst(n: u32) -> Quota {
    let n = NonZeroU32::new(n.max(1)).expect("at least one");
    let burst = n.saturating_mul(NonZeroU32::new(2).expect("two"));
    Quota::per_second(n).allow_burst(burst)
}

impl Limits {
    pub fn new(s: &LimitSettings) -> Self {
        Self {
            events: RateLimiter::keyed(per_second_with_double_burst(s.events_per_sec)),
            queries: RateLimiter::keyed(per_second_with_double_burst(s.queries_per_sec)),
            auth_failures: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(AUTH_WINDOW)
                .build(),
            max_auth_failures: s.auth_failures_per_minute.max(1),
            streams: Slots::new(s.streams_per_tenant),
            watchers: Slots::new(s.watchers_per_tenant),
            clock: DefaultClock::default(),
        }
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

    /// Refuses a client address that failed to authenticate [`LimitSettings::auth_failures_per_minute`]
    /// times with less than a minute between failures, until a minute passes without one.
    pub fn auth_allowed(&self, ip: Option<IpAddr>) -> Result<(), Error> {
        match ip.and_then(|ip| self.auth_failures.get(&ip)) {
            Some(n) if n >= self.max_auth_failures => Err(self.exhausted(
                "auth_failures",
                "too many failed authentications from this address",
                AUTH_WINDOW,
            )),
            _ => Ok(()),
        }
    }

    /// Records a failed authentication of `ip`.
    pub fn auth_failed(&self, ip: Option<IpAddr>) {
        if let Some(ip) = ip {
            self.auth_failures
                .entry(ip)
                .and_upsert_with(|n| n.map_or(1, |n| n.into_value().saturating_add(1)));
        }
    }

    /// A slot for an open stream of `tenant` (released when dropped).
    pub fn open_stream(&self, tenant: TenantId, kind: StreamKind) -> Result<StreamSlot, Error> {
        let watcher = match kind {
            StreamKind::Watcher => Some(self.watchers.take(tenant).ok_or_else(|| {
                self.exhausted_now("watchers", "the tenant has too many open WatchOverview streams")
            })?),
            StreamKind::Stream => None,
        };
        let stream = self
            .streams
            .take(tenant)
            .ok_or_else(|| self.exhausted_now("streams", "the tenant has too many open streams"))?;
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
