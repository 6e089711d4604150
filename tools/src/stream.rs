//! Simulated events out: as JSON lines (the proto3 JSON mapping of `chatkpi.v1.Event`) or
//! streamed to a server.

use std::{
    io::{BufWriter, Write},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use chatkpi::{
    client,
    domain::event::Event,
    grpc::{convert::event_to_proto, pb},
};

use crate::sim::{self, SimConfig};

/// Writes the simulated events as JSON lines to `path` (`-` = stdout).
pub fn write_jsonl(config: &SimConfig, path: &Path) -> anyhow::Result<u64> {
    let sink: Box<dyn Write> = if path.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?)
    };
    let mut out = BufWriter::new(sink);
    let mut result = Ok(());
    let mut count = 0u64;
    sim::for_each_day(config, |chunk| {
        for e in &chunk {
            if result.is_ok() {
                result = serde_json::to_writer(&mut out, &event_to_proto(e))
                    .map_err(anyhow::Error::from)
                    .and_then(|()| out.write_all(b"\n").map_err(anyhow::Error::from));
                count += 1;
            }
        }
    });
    result?;
    out.flush()?;
    Ok(count)
}

/// Streams the simulated events (without those of the kinds in `leave_out`, which an older server
/// may not know) to `server` in batches of `batch` over `streams` parallel streams and prints the
/// totals; fails when an event was rejected.
pub async fn to_server(
    config: &SimConfig,
    server: &str,
    api_key: &str,
    batch: usize,
    streams: usize,
    rate: Option<u64>,
    leave_out: Vec<String>,
) -> anyhow::Result<()> {
    let channel = client::connect(server).await?;
    let bearer = client::bearer(api_key)?;
    // The generator runs on a blocking thread and hands over batches through a bounded channel:
    // the simulator never runs far ahead of what the server has acknowledged.
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::StreamEventsRequest>(streams.max(1) * 4);
    let config = config.clone();
    let batch = batch.max(1);
    let generator = tokio::task::spawn_blocking(move || {
        let mut batch_id = 0u64;
        let (paced_from, mut generated) = (Instant::now(), 0u64);
        sim::for_each_day(&config, |mut chunk| {
            chunk.retain(|e| !leave_out.iter().any(|k| k == e.payload.kind()));
            for part in chunk.chunks(batch) {
                if let Some(rate) = rate.filter(|r| *r > 0) {
                    // Hold each batch until the rate allows it.
                    let due = Duration::from_secs_f64(generated as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(paced_from.elapsed()) {
                        std::thread::sleep(wait);
                    }
                    generated += part.len() as u64;
                }
                batch_id += 1;
                let events = part.iter().map(event_to_proto).collect();
                if tx
                    .blocking_send(pb::StreamEventsRequest { batch_id, events })
                    .is_err()
                {
                    return;
                }
            }
        });
    });
    let started = Instant::now();
    let totals = client::stream_batches(channel, bearer, rx, streams, |_| {}).await?;
    generator.await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "events={} accepted={} duplicates={} rejected={} seconds={:.2} events_per_second={:.0}",
        totals.events,
        totals.accepted,
        totals.duplicates,
        totals.rejected,
        secs,
        totals.events as f64 / secs
    );
    if totals.rejected > 0 {
        bail!("{} events were rejected", totals.rejected);
    }
    Ok(())
}

/// Simulated events of one day, validated the way the service validates what it receives.
pub fn validated(events: Vec<Event>, now: chrono::DateTime<chrono::Utc>) -> anyhow::Result<Vec<Event>> {
    events
        .iter()
        .map(|e| {
            Event::parse(&e.into(), now).map_err(|err| {
                anyhow::anyhow!(
                    "simulated event {} is invalid: {}: {}",
                    e.event_id,
                    err.field,
                    err.reason
                )
            })
        })
        .collect()
}
