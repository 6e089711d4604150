//! `chatkpi import`: a CRM's history, as JSON lines of `chatkpi.v1.Event` (proto3 JSON mapping,
//! plain or gzip, or stdin), streamed to a server with `StreamEvents`, with progress,
//! resumable from a checkpoint, rejected lines written to a rejects file, and a summary.
//!
//! Line bookkeeping: lines are read in order and cut into batches; each batch remembers the
//! lines of its events and the lines that could not be parsed. When a batch is acknowledged, the
//! server's rejections and its unparsable lines go to the rejects file, and the checkpoint
//! advances to the last line before which every batch is acknowledged. Batches on parallel
//! streams are acknowledged out of order, so the checkpoint is that contiguous watermark, never
//! a line whose predecessors might be lost. A rerun skips the lines up to the checkpoint; a batch
//! sent again after an interruption is harmless (event ids make repeats `DUPLICATE`), and its
//! rejections are written only once because they are written on acknowledgement.

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    io::{BufRead, BufReader, IsTerminal, Read, Write},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::{
    client::{self, Totals},
    grpc::pb,
};

/// What to import and where.
#[derive(Debug, Clone)]
pub struct ImportPlan {
    /// A file (`.gz` is decompressed) or `-` for stdin.
    pub input: PathBuf,
    pub server: String,
    pub api_key: String,
    pub batch: usize,
    pub streams: usize,
    /// Where acknowledged progress is kept; default `<input>.checkpoint` (none for stdin).
    pub checkpoint: Option<PathBuf>,
    /// Where rejected lines are appended; default `<input>.rejects.jsonl` (`rejects.jsonl` for
    /// stdin).
    pub rejects: Option<PathBuf>,
    /// Show a progress bar (a terminal) or print a line every few seconds.
    pub progress: Progress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Bar,
    Lines,
}

impl Progress {
    /// A bar on a terminal, periodic lines otherwise.
    pub fn detect() -> Progress {
        if std::io::stderr().is_terminal() {
            Progress::Bar
        } else {
            Progress::Lines
        }
    }
}

/// The outcome of an import (also printed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Lines skipped because the checkpoint said they were done.
    pub skipped_lines: u64,
    pub accepted: u64,
    pub duplicates: u64,
    /// Events the server rejected plus lines that were not an event.
    pub rejected: u64,
    pub seconds_x1000: u64,
}

/// The checkpoint file: every line up to `line` is acknowledged (or recorded as rejected).
#[derive(Debug, Serialize, Deserialize)]
struct Checkpoint {
    input: String,
    line: u64,
}

/// One line of the rejects file.
#[derive(Debug, Serialize)]
struct Rejection<'a> {
    line: u64,
    event_id: &'a str,
    field: &'a str,
    reason: &'a str,
}

/// Runs an import to the end and prints the summary.
pub async fn run(plan: &ImportPlan) -> anyhow::Result<Summary> {
    let (source, total_bytes) = open_input(&plan.input)?;
    let read_bytes = source.counter.clone();
    let (ledger, resume_after, rejects_path) = open_ledger(plan)?;
    let channel = client::connect(&plan.server).await?;
    let bearer = client::bearer(&plan.api_key)?;
    let (tx, rx) = mpsc::channel::<pb::StreamEventsRequest>(plan.streams.max(1) * 4);
    let reader = {
        let (ledger, batch) = (ledger.clone(), plan.batch.clamp(1, 100_000));
        tokio::task::spawn_blocking(move || read_batches(source, resume_after, batch, &ledger, &tx))
    };
    let started = Instant::now();
    let reporter = tokio::spawn(report_progress(
        plan.progress,
        ledger.clone(),
        read_bytes,
        total_bytes,
        started,
    ));
    let on_ack = {
        let ledger = ledger.clone();
        move |ack: &pb::StreamEventsResponse| ledger.lock().expect("ledger lock").acknowledged(ack)
    };
    let streamed = client::stream_batches(channel, bearer, rx, plan.streams, on_ack).await;
    reporter.abort();
    let read = reader.await.context("the reader stopped")?;
    let mut ledger = ledger.lock().expect("ledger lock");
    ledger.flush_checkpoint()?;
    if let Some(err) = ledger.io_error.take() {
        return Err(err);
    }
    streamed?;
    read?;
    let summary = Summary {
        skipped_lines: resume_after,
        accepted: ledger.totals.accepted,
        duplicates: ledger.totals.duplicates,
        rejected: ledger.totals.rejected + ledger.malformed,
        seconds_x1000: started.elapsed().as_millis() as u64,
    };
    eprintln!(
        "import done: accepted={} duplicates={} rejected={} seconds={:.1}{}",
        summary.accepted,
        summary.duplicates,
        summary.rejected,
        summary.seconds_x1000 as f64 / 1000.0,
        if summary.rejected > 0 {
            format!(" (rejects in {})", rejects_path.display())
        } else {
            String::new()
        }
    );
    Ok(summary)
}

/// The ledger of an import: where it resumes (the checkpoint, by default beside the input) and
/// the rejects file it appends to (by default beside the input, or `rejects.jsonl` for stdin).
fn open_ledger(plan: &ImportPlan) -> anyhow::Result<(Arc<Mutex<Ledger>>, u64, PathBuf)> {
    let stdin = plan.input.as_os_str() == "-";
    let checkpoint_path = plan
        .checkpoint
        .clone()
        .or_else(|| (!stdin).then(|| with_suffix(&plan.input, ".checkpoint")));
    let rejects_path = plan.rejects.clone().unwrap_or_else(|| {
        if stdin {
            PathBuf::from("rejects.jsonl")
        } else {
            with_suffix(&plan.input, ".rejects.jsonl")
        }
    });
    let resume_after = match &checkpoint_path {
        Some(path) => read_checkpoint(path, &plan.input)?,
        None => 0,
    };
    if resume_after > 0 {
        eprintln!("resuming after line {resume_after} (checkpoint)");
    }
    let rejects = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&rejects_path)
        .with_context(|| format!("cannot open the rejects file {}", rejects_path.display()))?;
    let ledger = Arc::new(Mutex::new(Ledger::new(
        resume_after,
        checkpoint_path,
        plan.input.display().to_string(),
        rejects,
    )));
    Ok((ledger, resume_after, rejects_path))
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn read_checkpoint(path: &Path, input: &Path) -> anyhow::Result<u64> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("cannot read the checkpoint {}", path.display())),
    };
    let checkpoint: Checkpoint = serde_json::from_str(&text).with_context(|| {
        format!(
            "the checkpoint {} is damaged; delete it to start over",
            path.display()
        )
    })?;
    if checkpoint.input != input.display().to_string() {
        anyhow::bail!(
            "the checkpoint {} belongs to {:?}, not {}; delete it or pass --checkpoint",
            path.display(),
            checkpoint.input,
            input.display()
        );
    }
    Ok(checkpoint.line)
}

/// The input's lines, and how many bytes of the file (compressed, for `.gz`) were read.
struct Source {
    lines: Box<dyn BufRead + Send>,
    counter: Arc<AtomicU64>,
}

/// Opens the input; returns it with the file's size (none for stdin).
fn open_input(input: &Path) -> anyhow::Result<(Source, Option<u64>)> {
    let counter = Arc::new(AtomicU64::new(0));
    if input.as_os_str() == "-" {
        let raw = Counting {
            inner: std::io::stdin(),
            counter: counter.clone(),
        };
        return Ok((
            Source {
                lines: Box::new(BufReader::new(raw)),
                counter,
            },
            None,
        ));
    }
    let file = File::open(input).with_context(|| format!("cannot open {}", input.display()))?;
    let size = file.metadata().map(|m| m.len()).ok();
    let raw = BufReader::new(Counting {
        inner: file,
        counter: counter.clone(),
    });
    let lines: Box<dyn BufRead + Send> = if input.extension().is_some_and(|e| e == "gz") {
        Box::new(BufReader::new(flate2::bufread::MultiGzDecoder::new(raw)))
    } else {
        Box::new(raw)
    };
    Ok((Source { lines, counter }, size))
}

/// A reader that counts the bytes it hands out (progress of the file).
struct Counting<R> {
    inner: R,
    counter: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// What a batch in flight stands for.
struct BatchLines {
    /// The line of each event, in batch order.
    events: Vec<u64>,
    /// Lines of the batch's range that were not an event, with the reason.
    malformed: Vec<(u64, String)>,
    /// The last line the batch covers.
    last: u64,
}

/// Reads lines after `resume_after`, parses them and sends batches; runs on a blocking thread.
fn read_batches(
    mut source: Source,
    resume_after: u64,
    batch: usize,
    ledger: &Mutex<Ledger>,
    tx: &mpsc::Sender<pb::StreamEventsRequest>,
) -> anyhow::Result<()> {
    let (mut line_no, mut batch_id) = (0u64, 0u64);
    let mut events = Vec::with_capacity(batch);
    let mut lines = BatchLines {
        events: Vec::new(),
        malformed: Vec::new(),
        last: 0,
    };
    let mut text = String::new();
    loop {
        text.clear();
        let n = source
            .lines
            .read_line(&mut text)
            .with_context(|| format!("cannot read line {}", line_no + 1))?;
        let at_end = n == 0;
        if !at_end {
            line_no += 1;
            if line_no > resume_after {
                let line = text.trim();
                if !line.is_empty() {
                    match serde_json::from_str::<pb::Event>(line) {
                        Ok(event) => {
                            events.push(event);
                            lines.events.push(line_no);
                        }
                        Err(e) => lines
                            .malformed
                            .push((line_no, format!("not a chatkpi.v1.Event: {e}"))),
                    }
                }
                lines.last = line_no;
            }
        }
        let full = events.len() >= batch || lines.malformed.len() >= batch;
        if (full || at_end) && lines.last > 0 {
            batch_id += 1;
            let done = std::mem::replace(
                &mut lines,
                BatchLines {
                    events: Vec::new(),
                    malformed: Vec::new(),
                    last: 0,
                },
            );
            ledger.lock().expect("ledger lock").sent(batch_id, done);
            let request = pb::StreamEventsRequest {
                batch_id,
                events: std::mem::take(&mut events),
            };
            if tx.blocking_send(request).is_err() {
                return Ok(()); // the streams stopped; their error is reported
            }
        }
        if at_end {
            return Ok(());
        }
    }
}

/// Acknowledgement bookkeeping shared by the reader and the streams.
struct Ledger {
    in_flight: HashMap<u64, BatchLines>,
    /// Acknowledged batches beyond the watermark: first line -> last line.
    done: BTreeMap<u64, u64>,
    /// First line of each batch sent, by batch id (the order batches cover the file).
    first_line: HashMap<u64, u64>,
    /// Every line up to here is acknowledged.
    watermark: u64,
    checkpoint: Option<PathBuf>,
    input: String,
    written_at: Instant,
    rejects: File,
    totals: Totals,
    malformed: u64,
    /// Lines read so far (progress).
    lines_sent: u64,
    io_error: Option<anyhow::Error>,
}

impl Ledger {
    fn new(resume_after: u64, checkpoint: Option<PathBuf>, input: String, rejects: File) -> Ledger {
        Ledger {
            in_flight: HashMap::new(),
            done: BTreeMap::new(),
            first_line: HashMap::new(),
            watermark: resume_after,
            checkpoint,
            input,
            written_at: Instant::now(),
            rejects,
            totals: Totals::default(),
            malformed: 0,
            lines_sent: resume_after,
            io_error: None,
        }
    }

    fn sent(&mut self, batch_id: u64, lines: BatchLines) {
        self.first_line.insert(batch_id, self.lines_sent + 1);
        self.lines_sent = lines.last;
        self.in_flight.insert(batch_id, lines);
    }

    fn acknowledged(&mut self, ack: &pb::StreamEventsResponse) {
        let Some(lines) = self.in_flight.remove(&ack.batch_id) else {
            return;
        };
        let first = self.first_line.remove(&ack.batch_id).unwrap_or(lines.last);
        self.totals.add(&Totals::of(ack));
        self.malformed += lines.malformed.len() as u64;
        if let Err(e) = self.write_rejects(ack, &lines) {
            self.io_error.get_or_insert(e);
        }
        self.done.insert(first, lines.last);
        while let Some(entry) = self.done.first_entry() {
            if *entry.key() != self.watermark + 1 {
                break;
            }
            self.watermark = entry.remove();
        }
        if self.written_at.elapsed() >= Duration::from_secs(1)
            && let Err(e) = self.flush_checkpoint()
        {
            self.io_error.get_or_insert(e);
        }
    }

    fn write_rejects(&mut self, ack: &pb::StreamEventsResponse, lines: &BatchLines) -> anyhow::Result<()> {
        let mut out = Vec::new();
        for (line, reason) in &lines.malformed {
            let r = Rejection {
                line: *line,
                event_id: "",
                field: "",
                reason,
            };
            serde_json::to_writer(&mut out, &r)?;
            out.push(b'\n');
        }
        for result in &ack.results {
            if result.outcome != pb::EventOutcome::Rejected as i32 {
                continue;
            }
            let line = lines.events.get(result.index as usize).copied().unwrap_or(0);
            // The server names the field within the batch (`events[7].message.agent_id`); the
            // line already says which event.
            let field = result
                .field
                .strip_prefix("events[")
                .and_then(|rest| rest.split_once("]."))
                .map_or(result.field.as_str(), |(_, field)| field);
            let r = Rejection {
                line,
                event_id: &result.event_id,
                field,
                reason: &result.reason,
            };
            serde_json::to_writer(&mut out, &r)?;
            out.push(b'\n');
        }
        if !out.is_empty() {
            self.rejects
                .write_all(&out)
                .context("cannot write the rejects file")?;
            self.rejects.flush()?;
        }
        Ok(())
    }

    /// Writes the checkpoint (atomically: a new file renamed over the old one).
    fn flush_checkpoint(&mut self) -> anyhow::Result<()> {
        self.written_at = Instant::now();
        let Some(path) = &self.checkpoint else {
            return Ok(());
        };
        let text = serde_json::to_string(&Checkpoint {
            input: self.input.clone(),
            line: self.watermark,
        })?;
        let tmp = with_suffix(path, ".tmp");
        std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }
}

/// Shows progress until aborted: a bar with events/s, done / total and ETA on a terminal,
/// otherwise a plain line every 5 seconds.
async fn report_progress(
    mode: Progress,
    ledger: Arc<Mutex<Ledger>>,
    read_bytes: Arc<AtomicU64>,
    total_bytes: Option<u64>,
    started: Instant,
) {
    let bar = match (mode, total_bytes) {
        (Progress::Bar, Some(total)) => indicatif::ProgressBar::new(total),
        (Progress::Bar, None) => indicatif::ProgressBar::new_spinner(),
        (Progress::Lines, _) => indicatif::ProgressBar::hidden(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {percent:>3}% {binary_bytes}/{binary_total_bytes} ETA {eta} | {msg}",
        )
        .expect("a valid template"),
    );
    let every = if mode == Progress::Bar {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(5)
    };
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let (events, line, rejected) = {
            let l = ledger.lock().expect("ledger lock");
            (l.totals.events, l.watermark, l.totals.rejected + l.malformed)
        };
        let secs = started.elapsed().as_secs_f64();
        let rate = events as f64 / secs.max(0.001);
        let msg = format!("{events} events ({rate:.0}/s), line {line} acknowledged, {rejected} rejected");
        let read = read_bytes.load(Ordering::Relaxed);
        if mode == Progress::Bar {
            bar.set_position(read);
            bar.set_message(msg);
        } else {
            let of = total_bytes.map_or(String::new(), |t| {
                let done = read as f64 / t.max(1) as f64;
                let eta = if done > 0.0 { secs / done - secs } else { 0.0 };
                format!(" ({:.0} % of the file, ETA {eta:.0} s)", 100.0 * done)
            });
            eprintln!("import: {msg}{of}");
        }
    }
}
