//! A client of chatkpi's EventService: streams batches of events over several parallel
//! `StreamEvents` calls and collects the acknowledgements (used by `chatkpi import` and the
//! benchmark and load tools).

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::sync::mpsc;
use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::Channel,
};

use crate::grpc::pb;

/// Connects to a chatkpi server, e.g. `http://127.0.0.1:50051`.
pub async fn connect(server: &str) -> anyhow::Result<Channel> {
    Channel::from_shared(server.to_owned())
        .with_context(|| format!("{server:?} is not a server address"))?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {server}"))
}

/// The `authorization` metadata of an API key.
pub fn bearer(api_key: &str) -> anyhow::Result<MetadataValue<Ascii>> {
    format!("Bearer {api_key}")
        .parse()
        .context("the api key is not valid metadata")
}

/// A request with the key's `authorization` metadata.
pub fn authed<T>(message: T, bearer: &MetadataValue<Ascii>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert("authorization", bearer.clone());
    r
}

/// Totals of acknowledgements.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub events: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
}

impl Totals {
    pub fn add(&mut self, other: &Totals) {
        // Taken apart so that a new counter left out here does not compile.
        let Totals {
            events,
            accepted,
            duplicates,
            rejected,
        } = other;
        self.events += events;
        self.accepted += accepted;
        self.duplicates += duplicates;
        self.rejected += rejected;
    }

    pub fn of(ack: &pb::StreamEventsResponse) -> Totals {
        Totals {
            events: ack.results.len() as u64,
            accepted: u64::from(ack.accepted),
            duplicates: u64::from(ack.duplicates),
            rejected: u64::from(ack.rejected),
        }
    }
}

/// Streams the batches from `batches` over `streams` parallel StreamEvents calls; `on_ack` sees
/// every acknowledgement (in each stream's send order). Returns the totals.
///
/// A stream that fails with a transient status (the server or its database restarting, a limit)
/// is opened again after a pause, and the batches it had sent without an acknowledgement are sent
/// first: the event ids make the repeats `DUPLICATE`, so every batch is acknowledged exactly
/// once. A stream fails for good on any other status, or when [`RETRY_FOR`] passes without an
/// acknowledgement.
pub async fn stream_batches(
    channel: Channel,
    bearer: MetadataValue<Ascii>,
    batches: mpsc::Receiver<pb::StreamEventsRequest>,
    streams: usize,
    on_ack: impl Fn(&pb::StreamEventsResponse) + Send + Sync + 'static,
) -> anyhow::Result<Totals> {
    let shared = Shared {
        batches: Arc::new(tokio::sync::Mutex::new(batches)),
        bearer,
        on_ack: Arc::new(on_ack),
    };
    let mut tasks = Vec::new();
    for stream_no in 0..streams.max(1) {
        let client = pb::event_service_client::EventServiceClient::new(channel.clone());
        tasks.push(tokio::spawn(stream_worker(stream_no, client, shared.clone())));
    }
    let mut totals = Totals::default();
    for task in tasks {
        totals.add(&task.await??);
    }
    Ok(totals)
}

/// How long a stream keeps retrying without any acknowledgement before it gives up.
pub const RETRY_FOR: Duration = Duration::from_secs(120);

type OnAck = dyn Fn(&pb::StreamEventsResponse) + Send + Sync;

/// What the parallel streams of [`stream_batches`] share.
#[derive(Clone)]
struct Shared {
    batches: Arc<tokio::sync::Mutex<mpsc::Receiver<pb::StreamEventsRequest>>>,
    bearer: MetadataValue<Ascii>,
    on_ack: Arc<OnAck>,
}

/// Batches a stream sent and the server has not acknowledged yet, oldest first.
type Unacked = Arc<std::sync::Mutex<VecDeque<pb::StreamEventsRequest>>>;

/// One of the parallel streams: attempts until the batches run out, resending what a failed
/// attempt left unacknowledged.
async fn stream_worker(
    stream_no: usize,
    mut client: pb::event_service_client::EventServiceClient<Channel>,
    shared: Shared,
) -> anyhow::Result<Totals> {
    let unacked: Unacked = Arc::default();
    let mut totals = Totals::default();
    let mut last_progress = Instant::now();
    let mut pause = Duration::from_millis(100);
    loop {
        let before = totals;
        match attempt(&mut client, &shared, &unacked, &mut totals).await {
            Ok(()) => return Ok(totals),
            Err(status) => {
                if totals != before {
                    last_progress = Instant::now();
                    pause = Duration::from_millis(100);
                }
                if !transient(&status) || last_progress.elapsed() > RETRY_FOR {
                    return Err(anyhow::Error::new(status).context(format!("stream {stream_no} failed")));
                }
                let pushback = status
                    .metadata()
                    .get("grpc-retry-pushback-ms")
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .map(Duration::from_millis);
                tracing::warn!(stream_no, code = ?status.code(), message = status.message(), "stream failed; resending its unacknowledged batches");
                tokio::time::sleep(pushback.unwrap_or(pause)).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Whether a failed stream is worth opening again: the server or its database is restarting
/// (UNAVAILABLE, a broken connection), or a limit asked the client to slow down.
fn transient(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::Unavailable
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Unknown
            | Code::Cancelled
            | Code::DeadlineExceeded
    )
}

/// One StreamEvents call: sends the unacknowledged batches of earlier attempts, then new ones,
/// and counts each acknowledgement against the oldest unacknowledged batch.
async fn attempt(
    client: &mut pb::event_service_client::EventServiceClient<Channel>,
    shared: &Shared,
    unacked: &Unacked,
    totals: &mut Totals,
) -> Result<(), tonic::Status> {
    let (req_tx, req_rx) = mpsc::channel::<pb::StreamEventsRequest>(4);
    let resend: Vec<_> = unacked.lock().expect("unacked lock").iter().cloned().collect();
    let feeder = {
        let (batches, unacked) = (shared.batches.clone(), unacked.clone());
        tokio::spawn(async move {
            for batch in resend {
                if req_tx.send(batch).await.is_err() {
                    return;
                }
            }
            loop {
                let Some(batch) = batches.lock().await.recv().await else {
                    return;
                };
                unacked.lock().expect("unacked lock").push_back(batch.clone());
                if req_tx.send(batch).await.is_err() {
                    return;
                }
            }
        })
    };
    // The feeder stops with the attempt: a batch it took is in `unacked`, so nothing is lost.
    let _stop = AbortOnDrop(feeder.abort_handle());
    let request = authed(
        tokio_stream::wrappers::ReceiverStream::new(req_rx),
        &shared.bearer,
    );
    let mut acks = client.stream_events(request).await?.into_inner();
    while let Some(ack) = acks.message().await? {
        let sent = unacked.lock().expect("unacked lock").pop_front();
        if sent.as_ref().map(|b| b.batch_id) != Some(ack.batch_id) {
            return Err(tonic::Status::internal(format!(
                "acknowledgement of batch {} does not match the batch sent",
                ack.batch_id
            )));
        }
        totals.add(&Totals::of(&ack));
        (shared.on_ack)(&ack);
    }
    let _ = feeder.await;
    match unacked.lock().expect("unacked lock").len() {
        0 => Ok(()),
        n => Err(tonic::Status::unavailable(format!(
            "the stream ended with {n} batches unacknowledged"
        ))),
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
