//! Fair shares of the CPU between tenants' KPI computations (README, Noisy neighbours).
//!
//! A computation runs on one of two pools of `cores` threads each: the interactive lane at the
//! normal priority, and the bulk lane at the lowest (nice 19). A tenant whose computations took
//! more than [`HEAVY_CPU`] of the last seconds (decayed with [`DECAY`]) runs on the bulk lane:
//! while it floods the server with questions never asked before, another tenant's dashboard
//! runs beside it at full priority, and when nobody else asks, the bulk lane has every core (a
//! priority, not a quota: nothing idles). The query cache's work of loading a tenant's history
//! (decoding records, building segments) runs on the tenant's lane too and is charged to it
//! (`cache::WORKER`). A tenant also runs at most [`PER_TENANT`]
//! computations at once; its others wait their turn within their request's deadline, so one
//! tenant's flood never holds more than that many working sets in memory.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::domain::{Error, tenant::TenantId};

/// Decayed computation time above which a tenant runs on the bulk lane.
const HEAVY_CPU: Duration = Duration::from_millis(500);
/// Time constant of the decay: recent seconds count, older ones fade.
const DECAY: Duration = Duration::from_secs(2);
/// Computations of one tenant at once.
pub const PER_TENANT: usize = 2;

/// Which lane a computation runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Interactive,
    Bulk,
}

/// One tenant's recent use.
struct Use {
    /// Decayed seconds of computation, as of `at`.
    busy: f64,
    at: Instant,
    running: Arc<Semaphore>,
}

impl Use {
    fn decayed(&self, now: Instant) -> f64 {
        self.busy * (-(now - self.at).as_secs_f64() / DECAY.as_secs_f64()).exp()
    }
}

/// The two lanes and every tenant's recent use.
pub struct Scheduler {
    interactive: rayon::ThreadPool,
    bulk: rayon::ThreadPool,
    tenants: Mutex<HashMap<TenantId, Use>>,
}

impl Scheduler {
    pub fn new() -> Result<Self, Error> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let pool = |name: &'static str, nice: bool| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(cores)
                .thread_name(move |i| format!("chatkpi-{name}-{i}"))
                .start_handler(move |_| {
                    if nice {
                        lower_priority();
                    }
                })
                .build()
                .map_err(|e| {
                    Error::Internal(anyhow::Error::new(e).context("cannot start a computation pool"))
                })
        };
        Ok(Self {
            interactive: pool("query", false)?,
            bulk: pool("bulk", true)?,
            tenants: Mutex::new(HashMap::new()),
        })
    }

    /// Waits for one of the tenant's [`PER_TENANT`] computation slots.
    pub async fn admit(&self, tenant: TenantId) -> Result<OwnedSemaphorePermit, Error> {
        let running = {
            let mut tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            // Forget tenants whose use has faded, so the table stays as small as the active set.
            if tenants.len() > 1024 {
                tenants.retain(|_, u| u.decayed(now) > 0.001 || u.running.available_permits() < PER_TENANT);
            }
            tenants
                .entry(tenant)
                .or_insert_with(|| Use {
                    busy: 0.0,
                    at: now,
                    running: Arc::new(Semaphore::new(PER_TENANT)),
                })
                .running
                .clone()
        };
        running
            .acquire_owned()
            .await
            .map_err(|_| Error::Unavailable("the query scheduler stopped".into()))
    }

    /// The lane the tenant's next computation runs on.
    pub fn lane(&self, tenant: TenantId) -> Lane {
        let tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        match tenants.get(&tenant) {
            Some(u) if u.decayed(Instant::now()) > HEAVY_CPU.as_secs_f64() => Lane::Bulk,
            _ => Lane::Interactive,
        }
    }

    /// Runs `f` on `lane` (its parallel work stays on that lane's threads) and charges the time
    /// it took to the tenant.
    pub fn run<R: Send>(&self, tenant: TenantId, lane: Lane, f: impl FnOnce() -> R + Send) -> R {
        let started = Instant::now();
        let result = match lane {
            Lane::Interactive => self.interactive.install(f),
            Lane::Bulk => self.bulk.install(f),
        };
        let took = started.elapsed().as_secs_f64();
        let mut tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(u) = tenants.get_mut(&tenant) {
            let now = Instant::now();
            u.busy = u.decayed(now) + took;
            u.at = now;
        }
        result
    }
}

/// Gives the calling thread the lowest CPU priority (nice 19): it runs when the interactive
/// lane leaves a core idle. Linux keeps a nice value per thread.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid and setpriority take and return plain integers; setpriority only lowers
    // this thread's own priority, which every process may do.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 19);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tenant_that_computed_most_of_the_last_seconds_runs_on_the_bulk_lane() {
        let s = Scheduler::new().unwrap();
        let (busy, light) = (TenantId(1), TenantId(2));
        for t in [busy, light] {
            drop(s.admit(t).await.unwrap());
        }
        s.run(busy, Lane::Interactive, || {
            std::thread::sleep(Duration::from_millis(700))
        });
        s.run(light, Lane::Interactive, || {
            std::thread::sleep(Duration::from_millis(20))
        });
        assert_eq!(s.lane(busy), Lane::Bulk);
        assert_eq!(s.lane(light), Lane::Interactive);
        // Work on a lane runs on that lane's threads.
        let name = s.run(light, Lane::Bulk, || {
            std::thread::current().name().map(str::to_owned)
        });
        assert!(name.unwrap().starts_with("chatkpi-bulk-"));
    }

    #[tokio::test]
    async fn a_tenant_runs_at_most_its_share_of_computations_at_once() {
        let s = Scheduler::new().unwrap();
        let held: Vec<_> = futures::future::join_all((0..PER_TENANT).map(|_| s.admit(TenantId(3)))).await;
        assert!(held.iter().all(Result::is_ok));
        let waiting = tokio::time::timeout(Duration::from_millis(50), s.admit(TenantId(3))).await;
        assert!(waiting.is_err(), "a further computation waits");
        assert!(s.admit(TenantId(4)).await.is_ok(), "another tenant does not");
    }
}
