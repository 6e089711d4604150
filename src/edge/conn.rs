//! Accepted connections and what one of them may hold: at most `max_connections` open, at most
//! `max_per_address` from one client address, a first request head within the handshake timeout
//! (TLS hello, HTTP/2 preface and HEADERS, or an HTTP/1.1 request line and headers), closed after
//! the idle timeout without a call in progress; TCP_NODELAY and TCP keepalive. A connection that
//! breaks a rule is closed and counted (`chatkpi_connections_closed_total{reason}`), so neither
//! descriptors nor slots can pile up, and one address cannot take the slots of all (README,
//! Limits). When every slot is taken, a new connection takes the place of the oldest one that has
//! not sent a request head yet, so clients spread over many addresses that open connections and
//! send nothing cannot keep others (or the health check) out either.

use std::{
    collections::{HashMap, VecDeque},
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures::task::AtomicWaker;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    time::{Instant, Sleep},
};

/// How connections are bounded.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub max_connections: usize,
    /// Open connections of one client address.
    pub max_per_address: usize,
    /// Time from accept to the end of the first request head (TLS included).
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Calls on one connection: how many began, how many are in progress, when the last ended.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    started: AtomicU64,
    calls: AtomicUsize,
    /// Milliseconds after `opened` when the last call ended.
    last_ms: AtomicU64,
    /// Set when a new connection took this one's place (see [`take_slot`]); `waker` then wakes
    /// the connection's reader so that it closes.
    evicted: AtomicBool,
    waker: AtomicWaker,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            started: AtomicU64::new(0),
            calls: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            evicted: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        }
    }

    /// Whether a first request head was read.
    fn spoke(&self) -> bool {
        self.started.load(Ordering::Acquire) > 0
    }

    fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Marks a call in progress (its request head was read) until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> CallGuard {
        self.started.fetch_add(1, Ordering::AcqRel);
        self.calls.fetch_add(1, Ordering::AcqRel);
        CallGuard(self.clone())
    }

    /// When the connection is to be closed if nothing changes: the end of the handshake time
    /// before a first request head, the end of the idle time after it; `None` while a call is in
    /// progress.
    fn deadline(&self, limits: &ConnLimits) -> Option<(Instant, &'static str)> {
        if self.started.load(Ordering::Acquire) == 0 {
            return Some((self.opened + limits.handshake_timeout, "handshake_timeout"));
        }
        (self.calls.load(Ordering::Acquire) == 0).then(|| {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Acquire));
            (self.opened + last + limits.idle_timeout, "idle")
        })
    }
}

/// A call in progress (see [`Activity::begin`]).
#[derive(Debug)]
pub struct CallGuard(Arc<Activity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        let a = &self.0;
        a.last_ms
            .store(a.opened.elapsed().as_millis() as u64, Ordering::Release);
        a.calls.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a call knows about its connection (in the request's extensions).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    pub activity: Arc<Activity>,
}

/// Open connections, in all and per client address, and those without a request head yet,
/// oldest first (entries of connections that spoke or closed are dropped lazily).
#[derive(Debug, Default)]
struct Slots {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
    silent: VecDeque<Weak<Activity>>,
}

impl Slots {
    /// Closes the oldest open connection that has not sent a request head; false when there is
    /// none.
    fn evict_oldest_silent(&mut self) -> bool {
        while let Some(oldest) = self.silent.pop_front() {
            if let Some(a) = oldest
                .upgrade()
                .filter(|a| !a.spoke() && !a.evicted.load(Ordering::Acquire))
            {
                a.evict();
                return true;
            }
        }
        false
    }

    fn remember_silent(&mut self, activity: &Arc<Activity>, limits: &ConnLimits) {
        self.silent.push_back(Arc::downgrade(activity));
        // Entries behind a live one are kept until it goes; at most twice the connections.
        if self.silent.len() > 2 * limits.max_connections {
            self.silent.retain(|w| w.upgrade().is_some_and(|a| !a.spoke()));
        }
    }
}

/// A connection's place among the open ones; freed when dropped.
pub struct Slot {
    slots: Arc<Mutex<Slots>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        s.total -= 1;
        if let Some(n) = s.per_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                s.per_address.remove(&self.ip);
            }
        }
        metrics::gauge!("chatkpi_connections_open").decrement(1.0);
    }
}

/// Takes a slot for a connection from `ip` (whose calls `activity` follows), or names the limit
/// that refuses it. When all are taken, the oldest connection that has not sent a request head is
/// closed to make room; the slots of closing connections are freed as they go, so open
/// connections may pass `max_connections` by a quarter (plus one) for that moment, never more.
fn take_slot(
    slots: &Arc<Mutex<Slots>>,
    ip: IpAddr,
    limits: &ConnLimits,
    activity: &Arc<Activity>,
) -> Result<Slot, &'static str> {
    let mut s = slots.lock().unwrap_or_else(|p| p.into_inner());
    if s.per_address.get(&ip).copied().unwrap_or(0) >= limits.max_per_address {
        return Err("too_many_from_address");
    }
    if s.total >= limits.max_connections {
        let ceiling = limits.max_connections + limits.max_connections / 4 + 1;
        if s.total >= ceiling || !s.evict_oldest_silent() {
            return Err("too_many");
        }
        metrics::counter!("chatkpi_connections_closed_total", "reason" => "replaced_silent").increment(1);
    }
    *s.per_address.entry(ip).or_insert(0) += 1;
    s.total += 1;
    s.remember_silent(activity, limits);
    metrics::gauge!("chatkpi_connections_open").increment(1.0);
    Ok(Slot {
        slots: slots.clone(),
        ip,
    })
}

/// An accepted TCP connection with its timers and its slot.
pub struct Conn {
    io: TcpStream,
    info: ConnInfo,
    limits: Arc<ConnLimits>,
    timer: Pin<Box<Sleep>>,
    _slot: Slot,
}

impl Conn {
    /// What calls on this connection see of it.
    pub fn info(&self) -> &ConnInfo {
        &self.info
    }

    /// Why the connection is to be closed now (its deadline passed), if it is; otherwise the
    /// timer is re-armed (and registered with `cx`).
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<&'static str> {
        let activity = &self.info.activity;
        activity.waker.register(cx.waker());
        if activity.evicted.load(Ordering::Acquire) && !activity.spoke() {
            return Some("replaced_silent");
        }
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return None;
            }
            match self.info.activity.deadline(&self.limits) {
                Some((deadline, reason)) if deadline <= Instant::now() => return Some(reason),
                Some((deadline, _)) => self.timer.as_mut().reset(deadline),
                // A call is in progress: look again one idle period from now.
                None => self
                    .timer
                    .as_mut()
                    .reset(Instant::now() + self.limits.idle_timeout),
            }
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Pending => match this.expired(cx) {
                Some(reason) => {
                    metrics::counter!("chatkpi_connections_closed_total", "reason" => reason).increment(1);
                    tracing::debug!(remote = ?this.info.remote, reason, "connection closed");
                    // End of stream: the HTTP server closes the connection.
                    Poll::Ready(Ok(()))
                }
                None => Poll::Pending,
            },
            other => other,
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Accepts connections until the receiver is dropped: each within the limits, with its socket
/// options set. Refused connections are closed at once and counted.
pub fn accept(listener: TcpListener, limits: ConnLimits) -> mpsc::Receiver<Conn> {
    let (tx, rx) = mpsc::channel(64);
    let limits = Arc::new(limits);
    let slots: Arc<Mutex<Slots>> = Arc::default();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (stream, remote) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of descriptors (EMFILE) and the like: log, breathe, go on.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let activity = Arc::new(Activity::new());
            let slot = match take_slot(&slots, remote.ip(), &limits, &activity) {
                Ok(slot) => slot,
                Err(reason) => {
                    metrics::counter!("chatkpi_connections_closed_total", "reason" => reason).increment(1);
                    tracing::debug!(%remote, reason, "connection refused");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            // Dead peers are found by the kernel, without traffic that would keep a connection
            // busy.
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(Duration::from_secs(60))
                .with_interval(Duration::from_secs(10));
            let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
            let conn = Conn {
                io: stream,
                info: ConnInfo {
                    remote: Some(remote),
                    activity,
                },
                timer: Box::pin(tokio::time::sleep(limits.handshake_timeout)),
                limits: limits.clone(),
                _slot: slot,
            };
            if tx.send(conn).await.is_err() {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_address: usize) -> ConnLimits {
        ConnLimits {
            max_connections: total,
            max_per_address: per_address,
            handshake_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn one_address_gets_its_share_and_others_the_rest() {
        let slots: Arc<Mutex<Slots>> = Arc::default();
        let l = limits(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let calls: Vec<_> = (0..5).map(|_| Arc::new(Activity::new())).collect();
        // Every connection has a call, so none can be replaced.
        let _busy: Vec<_> = calls.iter().map(Activity::begin).collect();
        let first = take_slot(&slots, a, &l, &calls[0]).unwrap();
        let _second = take_slot(&slots, a, &l, &calls[1]).unwrap();
        assert_eq!(
            take_slot(&slots, a, &l, &calls[2]).err(),
            Some("too_many_from_address")
        );
        let _other = take_slot(&slots, b, &l, &calls[3]).unwrap();
        assert_eq!(take_slot(&slots, b, &l, &calls[4]).err(), Some("too_many"));
        drop(first);
        assert!(
            take_slot(&slots, a, &l, &calls[0]).is_ok(),
            "a freed slot is taken again"
        );
    }

    #[test]
    fn when_full_a_new_connection_replaces_the_oldest_silent_one() {
        let slots: Arc<Mutex<Slots>> = Arc::default();
        let l = limits(4, 4);
        let addresses: Vec<IpAddr> = (1..=8).map(|i| format!("10.0.0.{i}").parse().unwrap()).collect();
        let conns: Vec<_> = (0..8).map(|_| Arc::new(Activity::new())).collect();
        let take = |i: usize| take_slot(&slots, addresses[i], &l, &conns[i]);
        let evicted = |i: usize| conns[i].evicted.load(Ordering::Acquire);
        let _spoke = conns[0].begin();
        let mut held: Vec<_> = (0..4).map(|i| take(i).unwrap()).collect();
        // Full: the oldest connection without a request head (the second) is replaced, not the
        // first, which has a call.
        held.push(take(4).unwrap());
        assert_eq!((evicted(0), evicted(1), evicted(2)), (false, true, false));
        held.push(take(5).unwrap());
        assert!(evicted(2));
        // The replaced connections have not closed yet: 4 + 4/4 + 1 = 6 open is the ceiling.
        assert_eq!(take(6).err(), Some("too_many"));
        assert!(!evicted(3));
        // Once they close, the next one replaces the next oldest silent one.
        held.drain(1..3);
        assert!(take(6).is_ok());
        assert!(evicted(3));
    }
}
