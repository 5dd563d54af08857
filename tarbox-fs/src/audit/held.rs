//! Audit batches a sink could not take because it was unavailable (the database restarting, a
//! dropped connection): held in order and delivered when the sink is back, so an outage costs
//! the audit trail a delay, not records.
//!
//! Up to `held_capacity` events wait in memory; older ones beyond that go to a spill file of JSON
//! lines (`<spill dir>/<sink>.jsonl`, the events oldest first) when a spill directory is
//! configured, and are read back first on recovery, also by the next engine if this one stops
//! before the sink comes back. Without a spill directory the oldest held events are dropped
//! beyond the bound: the last resort, counted and logged. An outage is logged once when it
//! starts and once when it ends, never per batch.

use std::collections::VecDeque;
use std::io::{BufRead as _, Write as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::{AuditEvent, AuditSink, SinkError};

/// First wait between retries; doubled after each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What happened to events offered to a sink.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Outcome {
    pub delivered: u64,
    /// Refused for good (not an outage) or dropped beyond the bound.
    pub dropped: u64,
    /// Moved from memory to the spill file.
    pub spilled: u64,
}

impl std::ops::AddAssign for Outcome {
    fn add_assign(&mut self, o: Outcome) {
        self.delivered += o.delivered;
        self.dropped += o.dropped;
        self.spilled += o.spilled;
    }
}

/// One sink and what it owes.
pub(super) struct Held {
    sink: Arc<dyn AuditSink>,
    batches: VecDeque<Vec<AuditEvent>>,
    in_memory: usize,
    capacity: usize,
    batch_size: usize,
    /// Events in the spill file, which are older than every batch in memory.
    spilled: usize,
    spill_file: Option<PathBuf>,
    failing_since: Option<Instant>,
    retry_at: Instant,
    backoff: Duration,
}

impl Held {
    /// `sink` with nothing held, or with what a previous engine spilled for it.
    pub fn new(
        sink: Arc<dyn AuditSink>,
        capacity: usize,
        batch_size: usize,
        spill_dir: Option<&std::path::Path>,
    ) -> Held {
        let spill_file = spill_dir.map(|d| d.join(format!("{}.jsonl", sink.name())));
        let spilled = spill_file.as_deref().map_or(0, count_lines);
        if spilled > 0 {
            info!(
                sink = sink.name(),
                events = spilled,
                "audit events spilled by an earlier run: delivering them"
            );
        }
        Held {
            sink,
            batches: VecDeque::new(),
            in_memory: 0,
            capacity: capacity.max(1),
            batch_size: batch_size.max(1),
            spilled,
            spill_file,
            failing_since: None,
            retry_at: Instant::now(),
            backoff: FIRST_BACKOFF,
        }
    }

    /// Events waiting (in memory and spilled).
    pub fn len(&self) -> usize {
        self.in_memory + self.spilled
    }

    /// When the next retry is due, if anything is held.
    pub fn due(&self) -> Option<Instant> {
        (self.len() > 0).then_some(self.retry_at)
    }

    /// Offer a batch: written at once when nothing is held, else queued behind what is (events
    /// reach a sink in the order they happened).
    pub async fn offer(&mut self, events: &[AuditEvent]) -> Outcome {
        let mut out = Outcome::default();
        if self.len() == 0 {
            match self.sink.write(events).await {
                Ok(()) => {
                    out.delivered += events.len() as u64;
                    return out;
                }
                Err(e) if e.is_transient() => self.outage_begins(&e),
                Err(e) => {
                    warn!(error = %e, events = events.len(), "audit sink refused a batch: dropped");
                    out.dropped += events.len() as u64;
                    return out;
                }
            }
        }
        out += self.hold(events.to_vec());
        out
    }

    /// Try to deliver what is held: when due, or at once with `now` (a flush asked).
    pub async fn retry(&mut self, now: bool) -> Outcome {
        let mut out = Outcome::default();
        if self.len() == 0 || (!now && Instant::now() < self.retry_at) {
            return out;
        }
        let total = self.len();
        if self.spilled > 0 {
            match self.drain_spill().await {
                Ok(o) => out += o,
                Err(e) => {
                    self.retry_later(&e);
                    return out;
                }
            }
        }
        while let Some(batch) = self.batches.pop_front() {
            match self.sink.write(&batch).await {
                Ok(()) => {
                    self.in_memory -= batch.len();
                    out.delivered += batch.len() as u64;
                }
                Err(e) if e.is_transient() => {
                    self.batches.push_front(batch);
                    self.retry_later(&e);
                    return out;
                }
                Err(e) => {
                    self.in_memory -= batch.len();
                    warn!(error = %e, events = batch.len(), "audit sink refused a held batch: dropped");
                    out.dropped += batch.len() as u64;
                }
            }
        }
        if let Some(since) = self.failing_since.take() {
            info!(
                sink = self.sink.name(),
                events = total,
                outage_secs = since.elapsed().as_secs_f64(),
                "audit sink is back: held events delivered"
            );
        }
        self.backoff = FIRST_BACKOFF;
        out
    }

    /// At shutdown: whatever is still held goes to the spill file, or is dropped (counted).
    pub fn shut_down(&mut self) -> Outcome {
        let mut out = Outcome::default();
        while let Some(batch) = self.batches.pop_front() {
            self.in_memory -= batch.len();
            out += self.spill_or_drop(batch);
        }
        if out.dropped > 0 {
            warn!(
                sink = self.sink.name(),
                events = out.dropped,
                "engine stopped with audit events its sink never took, and no spill directory: dropped"
            );
        }
        out
    }

    fn outage_begins(&mut self, e: &SinkError) {
        if self.failing_since.is_none() {
            warn!(sink = self.sink.name(), error = %e, "audit sink unavailable: holding events until it is back");
            self.failing_since = Some(Instant::now());
        }
        self.backoff = FIRST_BACKOFF;
        self.retry_at = Instant::now() + self.backoff;
    }

    fn retry_later(&mut self, e: &SinkError) {
        if self.failing_since.is_none() {
            self.outage_begins(e);
            return;
        }
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        self.retry_at = Instant::now() + self.backoff;
    }

    fn hold(&mut self, batch: Vec<AuditEvent>) -> Outcome {
        let mut out = Outcome::default();
        self.in_memory += batch.len();
        self.batches.push_back(batch);
        while self.in_memory > self.capacity {
            let Some(oldest) = self.batches.pop_front() else {
                break;
            };
            self.in_memory -= oldest.len();
            out += self.spill_or_drop(oldest);
        }
        metrics::gauge!("tarbox_audit_held_events", "sink" => self.sink.name())
            .set(self.len() as f64);
        out
    }

    fn spill_or_drop(&mut self, batch: Vec<AuditEvent>) -> Outcome {
        let n = batch.len() as u64;
        if let Some(path) = &self.spill_file {
            match append(path, &batch) {
                Ok(()) => {
                    self.spilled += batch.len();
                    return Outcome {
                        spilled: n,
                        ..Outcome::default()
                    };
                }
                Err(e) => warn!(path = %path.display(), error = %e, "cannot spill audit events"),
            }
        }
        warn!(
            sink = self.sink.name(),
            events = n,
            "audit events beyond the held bound: dropped"
        );
        Outcome {
            dropped: n,
            ..Outcome::default()
        }
    }

    /// Deliver the spill file in batches, oldest first; it is removed once all are delivered.
    /// A transient failure leaves it whole (a redelivered prefix is the lesser harm).
    async fn drain_spill(&mut self) -> Result<Outcome, SinkError> {
        let mut out = Outcome::default();
        let Some(path) = self.spill_file.clone() else {
            return Ok(out);
        };
        let events = read_events(&path);
        for chunk in events.chunks(self.batch_size) {
            match self.sink.write(chunk).await {
                Ok(()) => out.delivered += chunk.len() as u64,
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => {
                    warn!(error = %e, events = chunk.len(), "audit sink refused spilled events: dropped");
                    out.dropped += chunk.len() as u64;
                }
            }
        }
        // Events that did not parse (a torn last line after a crash) are counted as dropped.
        out.dropped += self.spilled.saturating_sub(events.len()) as u64;
        if let Err(e) = std::fs::remove_file(&path) {
            warn!(path = %path.display(), error = %e, "cannot remove the delivered audit spill file");
        }
        self.spilled = 0;
        Ok(out)
    }
}

fn count_lines(path: &std::path::Path) -> usize {
    std::fs::File::open(path).map_or(0, |f| std::io::BufReader::new(f).lines().count())
}

fn append(path: &std::path::Path, batch: &[AuditEvent]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let mut buf = Vec::new();
    for event in batch {
        serde_json::to_writer(&mut buf, event).map_err(std::io::Error::other)?;
        buf.push(b'\n');
    }
    file.write_all(&buf)?;
    file.sync_data()
}

fn read_events(path: &std::path::Path) -> Vec<AuditEvent> {
    let Ok(file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    std::io::BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| serde_json::from_str(&line).ok())
        .collect()
}
