//! Audit batches a sink could not take because it was unavailable (the database restarting, a
//! dropped connection): held in order and delivered when the sink is back, so an outage costs
//! the audit trail a delay, not records.
//!
//! Up to `held_capacity` events wait in memory; older ones beyond that go to a spill file of JSON
//! lines when a spill directory is configured (`<spill dir>/<sink>.<pid>.<n>.jsonl`, this
//! engine's own, the events oldest first), and are read back first on recovery. An engine
//! starting on the directory claims the files earlier engines left for its sink (renaming each
//! to a name of its own first, so no two engines deliver one file) and delivers them before
//! anything newer. A delivery that fails half way rewrites the file with what is left, so
//! nothing is sent twice. Without a spill directory the oldest held events are dropped beyond
//! the bound: the last resort, counted and logged. An outage is logged once when it
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
    /// Events in spill files (claimed ones, then this engine's own), all older than every
    /// batch in memory.
    spilled: usize,
    /// Files earlier engines left, claimed by this one, oldest first.
    claimed: VecDeque<PathBuf>,
    /// This engine's own spill file.
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
        let spill_file = spill_dir.map(|d| own_file(d, sink.name()));
        let claimed = spill_dir.map_or_else(VecDeque::new, |d| claim(d, sink.name()));
        let spilled = claimed.iter().map(|p| count_lines(p)).sum();
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
            claimed,
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
        self.set_gauge();
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
        self.set_gauge();
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

    /// Deliver the spill files in batches, oldest first (claimed ones, then this engine's own),
    /// removing each once delivered. A transient failure rewrites the file with the events not
    /// yet delivered, so a retry sends nothing twice.
    async fn drain_spill(&mut self) -> Result<Outcome, SinkError> {
        let mut out = Outcome::default();
        let mut files: Vec<PathBuf> = self.claimed.iter().cloned().collect();
        files.extend(self.spill_file.iter().filter(|p| p.exists()).cloned());
        for path in files {
            let (events, torn) = read_events(&path);
            // Lines that did not parse (a torn last line after a crash) are counted as dropped.
            out.dropped += torn as u64;
            self.spilled = self.spilled.saturating_sub(torn);
            let mut sent = 0;
            for chunk in events.chunks(self.batch_size) {
                match self.sink.write(chunk).await {
                    Ok(()) => out.delivered += chunk.len() as u64,
                    Err(e) if e.is_transient() => {
                        if let Err(io) = rewrite(&path, &events[sent..]) {
                            warn!(path = %path.display(), error = %io, "cannot rewrite an audit spill file");
                        }
                        return Err(e);
                    }
                    Err(e) => {
                        warn!(error = %e, events = chunk.len(), "audit sink refused spilled events: dropped");
                        out.dropped += chunk.len() as u64;
                    }
                }
                sent += chunk.len();
                self.spilled = self.spilled.saturating_sub(chunk.len());
            }
            if let Err(e) = std::fs::remove_file(&path) {
                warn!(path = %path.display(), error = %e, "cannot remove a delivered audit spill file");
            }
            self.claimed.retain(|p| *p != path);
        }
        self.spilled = 0;
        Ok(out)
    }

    fn set_gauge(&self) {
        metrics::gauge!("tarbox_audit_held_events", "sink" => self.sink.name())
            .set(self.len() as f64);
    }
}

static NEXT_FILE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A spill file name of this process for `sink`, never used before in it.
fn own_file(dir: &std::path::Path, sink: &str) -> PathBuf {
    let n = NEXT_FILE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    dir.join(format!("{sink}.{}.{n}.jsonl", std::process::id()))
}

/// Claim the spill files earlier engines left in `dir` for `sink`, oldest first: each is renamed
/// to a name of this process before it is read, so no two engines deliver the same file.
fn claim(dir: &std::path::Path, sink: &str) -> VecDeque<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return VecDeque::new();
    };
    let prefix = format!("{sink}.");
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".jsonl"))
        })
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    found.sort();
    let mut claimed = VecDeque::new();
    for (_, path) in found {
        let mine = own_file(dir, sink);
        if std::fs::rename(&path, &mine).is_ok() {
            claimed.push_back(mine);
        }
    }
    claimed
}

/// Replace `path` with `events` (a temporary file renamed into place).
fn rewrite(path: &std::path::Path, events: &[AuditEvent]) -> std::io::Result<()> {
    let tmp = path.with_extension("jsonl.tmp");
    let _ = std::fs::remove_file(&tmp);
    append(&tmp, events)?;
    std::fs::rename(&tmp, path)
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

/// The events of a spill file, and how many lines did not parse.
fn read_events(path: &std::path::Path) -> (Vec<AuditEvent>, usize) {
    let Ok(file) = std::fs::File::open(path) else {
        return (Vec::new(), 0);
    };
    let (mut events, mut torn) = (Vec::new(), 0);
    for line in std::io::BufReader::new(file).lines().map_while(Result::ok) {
        match serde_json::from_str(&line) {
            Ok(event) => events.push(event),
            Err(_) => torn += 1,
        }
    }
    (events, torn)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;

    /// A sink that takes `budget` more events, then is unavailable until given more.
    struct Flaky {
        taken: Mutex<Vec<u64>>,
        budget: AtomicUsize,
    }

    #[async_trait]
    impl AuditSink for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }

        async fn write(&self, events: &[AuditEvent]) -> Result<(), SinkError> {
            let left = self.budget.load(Ordering::SeqCst);
            if left < events.len() {
                return Err(SinkError::unavailable("flaky", "down"));
            }
            self.budget.store(left - events.len(), Ordering::SeqCst);
            let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
            taken.extend(events.iter().map(|e| e.seq));
            Ok(())
        }
    }

    #[tokio::test]
    async fn held_events_arrive_once_in_order_across_failures_and_engines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = Arc::new(Flaky {
            taken: Mutex::new(Vec::new()),
            budget: AtomicUsize::new(0),
        });
        // Two events in memory at most; the rest spill. The sink is down.
        let mut held = Held::new(sink.clone(), 2, 2, Some(dir.path()));
        for seq in 0..10 {
            held.offer(&[AuditEvent::sample(seq)]).await;
        }
        assert_eq!(held.len(), 10);
        // It comes back for three events only: a spilled prefix is delivered, the file keeps
        // the rest.
        sink.budget.store(3, Ordering::SeqCst);
        held.retry(true).await;
        // The engine stops; what it holds goes to disk; a new engine claims and delivers it.
        held.shut_down();
        sink.budget.store(100, Ordering::SeqCst);
        let mut next = Held::new(sink.clone(), 2, 2, Some(dir.path()));
        assert_eq!(next.len(), 8, "what the first engine did not deliver");
        let out = next.retry(true).await;
        assert_eq!(out.delivered, 8);
        let taken = sink.taken.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(
            taken,
            (0..10).collect::<Vec<_>>(),
            "every event once, in order"
        );
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
    }
}
