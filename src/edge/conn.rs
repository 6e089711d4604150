//! Accepted connections: at most `max_connections` open, the first bytes (HTTP/2 preface or TLS
//! hello) within the handshake timeout, closed after the idle timeout without a call in
//! progress, TCP_NODELAY and TCP keepalive. A connection that breaks a rule is closed and
//! counted (`chatkpi_connections_closed_total{reason}`), so descriptors cannot pile up.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures::Stream;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    time::{Instant, Sleep},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

/// How connections are bounded.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Calls in progress on one connection, and when the last one ended.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    calls: AtomicUsize,
    /// Milliseconds after `opened` when the last call ended.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            calls: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
        }
    }

    /// Marks a call in progress until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> CallGuard {
        self.calls.fetch_add(1, Ordering::AcqRel);
        CallGuard(self.clone())
    }

    /// When the connection becomes idle-expired, if no call is in progress now.
    fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        (self.calls.load(Ordering::Acquire) == 0)
            .then(|| self.opened + Duration::from_millis(self.last_ms.load(Ordering::Acquire)) + idle)
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

/// An accepted TCP connection with its idle timer and its slot among the open connections.
pub struct Conn {
    io: TcpStream,
    info: ConnInfo,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    _slot: OwnedSemaphorePermit,
}

impl Conn {
    /// Whether the idle timeout has passed with no call in progress; otherwise re-arms the timer
    /// (registered with `cx`).
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            match self.info.activity.idle_deadline(self.idle) {
                Some(deadline) if deadline <= Instant::now() => return true,
                Some(deadline) => self.timer.as_mut().reset(deadline),
                // A call is in progress: look again one idle period from now.
                None => self.timer.as_mut().reset(Instant::now() + self.idle),
            }
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        metrics::gauge!("chatkpi_connections_open").decrement(1.0);
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Pending if this.idle_expired(cx) => {
                metrics::counter!("chatkpi_connections_closed_total", "reason" => "idle").increment(1);
                // End of stream: the HTTP/2 server closes the connection.
                Poll::Ready(Ok(()))
            }
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

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// The stream of accepted connections the gRPC server reads. Accepting stops when the server
/// drops the stream.
pub fn incoming(listener: TcpListener, limits: ConnLimits) -> impl Stream<Item = io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
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
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                metrics::counter!("chatkpi_connections_closed_total", "reason" => "too_many").increment(1);
                tracing::debug!(%remote, "connection refused: too many open connections");
                continue;
            };
            let (tx, limits) = (tx.clone(), limits.clone());
            tokio::spawn(async move {
                if let Some(conn) = handshake(stream, remote, slot, &limits).await {
                    let _ = tx.send(Ok(conn)).await;
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Socket options, then waits for the first byte within the handshake timeout.
async fn handshake(
    stream: TcpStream,
    remote: SocketAddr,
    slot: OwnedSemaphorePermit,
    limits: &ConnLimits,
) -> Option<Conn> {
    let _ = stream.set_nodelay(true);
    // Dead peers are found by the kernel, without traffic that would keep a connection busy.
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10));
    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
    let mut first = [0u8; 1];
    match tokio::time::timeout(limits.handshake_timeout, stream.peek(&mut first)).await {
        Ok(Ok(n)) if n > 0 => {}
        Ok(_) => return None,
        Err(_) => {
            metrics::counter!("chatkpi_connections_closed_total", "reason" => "handshake_timeout")
                .increment(1);
            tracing::debug!(%remote, "connection closed: nothing sent within the handshake timeout");
            return None;
        }
    }
    let activity = Arc::new(Activity::new());
    metrics::gauge!("chatkpi_connections_open").increment(1.0);
    Some(Conn {
        io: stream,
        info: ConnInfo {
            remote: Some(remote),
            activity,
        },
        idle: limits.idle_timeout,
        timer: Box::pin(tokio::time::sleep(limits.idle_timeout)),
        _slot: slot,
    })
}
