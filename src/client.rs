//! A client of chatkpi's EventService: streams batches of events over several parallel
//! `StreamEvents` calls and collects the acknowledgements (used by `chatkpi import` and the
//! benchmark tools).

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
        self.events += other.events;
        self.accepted += other.accepted;
        self.duplicates += other.duplicates;
        self.rejected += other.rejected;
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
pub async fn stream_batches(
    channel: Channel,
    bearer: MetadataValue<Ascii>,
    batches: mpsc::Receiver<pb::StreamEventsRequest>,
    streams: usize,
    on_ack: impl Fn(&pb::StreamEventsResponse) + Send + Sync + 'static,
) -> anyhow::Result<Totals> {
    let batches = std::sync::Arc::new(tokio::sync::Mutex::new(batches));
    let on_ack = std::sync::Arc::new(on_ack);
    let mut tasks = Vec::new();
    for stream_no in 0..streams.max(1) {
        let (batches, bearer, on_ack) = (batches.clone(), bearer.clone(), on_ack.clone());
        let mut client = pb::event_service_client::EventServiceClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            let (req_tx, req_rx) = mpsc::channel::<pb::StreamEventsRequest>(4);
            let request = authed(tokio_stream::wrappers::ReceiverStream::new(req_rx), &bearer);
            let feeder = tokio::spawn(async move {
                let mut sent = 0u64;
                loop {
                    let next = batches.lock().await.recv().await;
                    let Some(batch) = next else { break };
                    sent += batch.events.len() as u64;
                    if req_tx.send(batch).await.is_err() {
                        break;
                    }
                }
                sent
            });
            let mut acks = client
                .stream_events(request)
                .await
                .with_context(|| format!("stream {stream_no} was refused"))?
                .into_inner();
            let mut totals = Totals::default();
            while let Some(ack) = acks
                .message()
                .await
                .with_context(|| format!("stream {stream_no} failed"))?
            {
                totals.add(&Totals::of(&ack));
                on_ack(&ack);
            }
            let sent = feeder.await.unwrap_or(0);
            if sent != totals.events {
                anyhow::bail!(
                    "stream {stream_no}: sent {sent} events but {} were acknowledged",
                    totals.events
                );
            }
            Ok::<_, anyhow::Error>(totals)
        }));
    }
    let mut totals = Totals::default();
    for task in tasks {
        totals.add(&task.await??);
    }
    Ok(totals)
}
