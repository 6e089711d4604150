//! gRPC adapters: generated code, the services (proto <-> domain only), auth and status mapping,
//! and the guard every open stream runs under ([`Guarded`]).

pub mod admin;
pub mod auth;
pub mod convert;
pub mod events;
pub mod metrics;
pub mod status;

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::{Stream, task::AtomicWaker};
use tonic::Status;

use crate::app::{keys::KeyWatch, limits::StreamSlot};

/// A stream of answers as tonic sends them.
type Answers<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// How often an open stream's watchdog looks at its key and its client.
const WATCHDOG_TICK: Duration = Duration::from_secs(1);

/// The response stream of one open call (README, Limits). It holds the tenant's stream slot
/// while it is open, and ends, freeing the slot and dropping what produces its answers (which
/// stops the work behind them):
/// - with UNAUTHENTICATED once its key is revoked (within a second of the revocation check);
/// - with DEADLINE_EXCEEDED once its client has not taken an answer for `stall` while one was
///   ready (a client that stopped reading holds only its own HTTP/2 stream, no slot, no data).
pub(crate) struct Guarded<T> {
    shared: Arc<Shared<T>>,
    watchdog: tokio::task::JoinHandle<()>,
}

struct Shared<T> {
    answers: Mutex<Option<Answers<T>>>,
    ending: Mutex<Option<Status>>,
    slot: Mutex<Option<StreamSlot>>,
    waker: AtomicWaker,
    opened: Instant,
    /// Milliseconds after `opened` since which an answer has been waiting for the transport to
    /// take it: the last one handed over (the client's window was open then) or one that
    /// became ready since the last poll; `u64::MAX` while the stream waits for its own answers.
    waiting_ms: AtomicU64,
}

impl<T> Shared<T> {
    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }
}

/// The waker the answers are polled with: an answer that becomes ready while the transport does
/// not poll (its client's window is full) starts the stall clock.
impl<T: Send> futures::task::ArcWake for Shared<T> {
    fn wake_by_ref(arc: &Arc<Self>) {
        let _ = arc
            .waiting_ms
            .compare_exchange(u64::MAX, arc.now_ms(), Ordering::AcqRel, Ordering::Acquire);
        arc.waker.wake();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<T: Send + 'static> Guarded<T> {
    pub fn new(
        answers: impl Stream<Item = Result<T, Status>> + Send + 'static,
        slot: StreamSlot,
        key: KeyWatch,
        stall: Duration,
    ) -> Self {
        let shared = Arc::new(Shared {
            answers: Mutex::new(Some(Box::pin(answers))),
            ending: Mutex::new(None),
            slot: Mutex::new(Some(slot)),
            waker: AtomicWaker::new(),
            opened: Instant::now(),
            waiting_ms: AtomicU64::new(u64::MAX),
        });
        let watchdog = tokio::spawn(watch(shared.clone(), key, stall));
        Self { shared, watchdog }
    }
}

/// Ends the stream when its key is revoked or its client stalls.
async fn watch<T>(shared: Arc<Shared<T>>, key: KeyWatch, stall: Duration) {
    loop {
        tokio::time::sleep(WATCHDOG_TICK).await;
        if lock(&shared.answers).is_none() {
            return; // finished
        }
        let since = shared.waiting_ms.load(Ordering::Acquire);
        let waited = Duration::from_millis(shared.now_ms().saturating_sub(since));
        let (reason, status) = if key.is_revoked() {
            ("revoked", Status::unauthenticated("the API key was revoked"))
        } else if since != u64::MAX && waited > stall {
            (
                "stalled",
                Status::deadline_exceeded(format!(
                    "the client did not read for {} s; the stream was ended",
                    stall.as_secs()
                )),
            )
        } else {
            continue;
        };
        ::metrics::counter!("chatkpi_streams_ended_total", "reason" => reason).increment(1);
        *lock(&shared.ending) = Some(status);
        // Dropping the producer stops its work; the slot is free for another stream at once.
        drop(lock(&shared.answers).take());
        drop(lock(&shared.slot).take());
        shared.waker.wake();
        return;
    }
}

impl<T> Drop for Guarded<T> {
    fn drop(&mut self) {
        self.watchdog.abort();
        // What produces the answers may hold this stream's waker (an `Arc` of `shared`): drop it
        // here, or neither would ever be freed, nor the slot.
        drop(lock(&self.shared.answers).take());
        drop(lock(&self.shared.slot).take());
    }
}

impl<T: Send + 'static> Stream for Guarded<T> {
    type Item = Result<T, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let shared = &self.shared;
        shared.waker.register(cx.waker());
        if let Some(status) = lock(&shared.ending).take() {
            return Poll::Ready(Some(Err(status)));
        }
        let mut answers = lock(&shared.answers);
        let Some(stream) = answers.as_mut() else {
            return Poll::Ready(None);
        };
        // Cleared before the poll: an answer that becomes ready during it restarts the clock.
        shared.waiting_ms.store(u64::MAX, Ordering::Release);
        let waker = futures::task::waker_ref(shared);
        match stream.as_mut().poll_next(&mut Context::from_waker(&waker)) {
            Poll::Ready(Some(item)) => {
                shared.waiting_ms.store(shared.now_ms(), Ordering::Release);
                Poll::Ready(Some(item))
            }
            Poll::Ready(None) => {
                *answers = None;
                drop(lock(&shared.slot).take());
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Code generated from `proto/chatkpi/v1` (prost messages, tonic services, pbjson serde).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("chatkpi.v1");
    include!(concat!(env!("OUT_DIR"), "/chatkpi.v1.serde.rs"));

    /// The file descriptor set served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("chatkpi_descriptor");
}
