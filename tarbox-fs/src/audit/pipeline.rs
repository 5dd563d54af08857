//! The bounded queue between file operations and the sinks.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::warn;

use super::held::{Held, Outcome};
use super::{AuditConfig, AuditEvent, AuditSink, Overflow};

enum Msg {
    Event(Box<AuditEvent>),
    /// Write everything queued before this, then answer.
    Flush(oneshot::Sender<()>),
    /// Like `Flush`, then spill (or drop, counted) what unavailable sinks still owe: the engine
    /// is closing.
    Close(oneshot::Sender<()>),
}

/// Delivery counters since the engine started. `recorded = written_per_sink + dropped_*` once
/// the queue is drained, for every sink.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AuditCounters {
    /// Events handed to the auditor.
    pub recorded: u64,
    /// Events dropped because the queue was full (no sink got them).
    pub dropped_queue_full: u64,
    /// Event deliveries a sink refused for good, or dropped beyond the held bound without a
    /// spill directory (counted once per sink and event).
    pub dropped_sink_error: u64,
    /// Events waiting for an unavailable sink now (in memory and spilled), summed over sinks.
    pub held: u64,
    /// Events moved to the spill directory since the engine started.
    pub spilled: u64,
    /// Event deliveries sinks accepted (once per sink and event).
    pub delivered: u64,
    /// Batches written (once per batch, whatever the number of sinks).
    pub batches: u64,
}

#[derive(Debug, Default)]
struct Counters {
    recorded: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_sink_error: AtomicU64,
    held: AtomicU64,
    spilled: AtomicU64,
    delivered: AtomicU64,
    batches: AtomicU64,
    /// Unix second of the last drop warning, to log at most one per second.
    last_drop_warning: AtomicI64,
}

/// Takes events from file operations without waiting (beyond the queue) and writes them to the
/// sinks in batches from one background task.
#[derive(Debug)]
pub struct Auditor {
    tx: mpsc::Sender<Msg>,
    flush_requested: Arc<Notify>,
    overflow: Overflow,
    capacity: usize,
    counters: Arc<Counters>,
}

impl Auditor {
    /// Start the writer task on the current tokio runtime.
    pub fn start(config: &AuditConfig, sinks: Vec<Arc<dyn AuditSink>>) -> Auditor {
        let capacity = config.queue_capacity.max(1);
        let (tx, rx) = mpsc::channel(capacity);
        let counters = Arc::new(Counters::default());
        let flush_requested = Arc::new(Notify::new());
        let held = sinks
            .into_iter()
            .map(|sink| {
                let dir = config.spill_dir.as_deref();
                Held::new(sink, config.held_capacity, config.batch_size, dir)
            })
            .collect();
        let writer = Writer {
            rx,
            flush_requested: flush_requested.clone(),
            held,
            batch_size: config.batch_size.max(1),
            flush_interval: config.flush_interval,
            counters: counters.clone(),
        };
        tokio::spawn(writer.run());
        Auditor {
            tx,
            flush_requested,
            overflow: config.overflow,
            capacity,
            counters,
        }
    }

    /// Queue an event. With [`Overflow::Drop`] this never waits.
    pub async fn record(&self, event: AuditEvent) {
        self.counters.recorded.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tarbox_audit_events_total").increment(1);
        let msg = Msg::Event(Box::new(event));
        let sent = match self.overflow {
            Overflow::Drop => self.tx.try_send(msg).is_ok(),
            Overflow::Block => self.tx.send(msg).await.is_ok(),
        };
        if !sent {
            self.counters
                .dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
            metrics::counter!("tarbox_audit_dropped_total", "reason" => "queue_full").increment(1);
            self.warn_drop();
        }
    }

    /// Events waiting in the queue.
    pub fn depth(&self) -> usize {
        self.capacity - self.tx.capacity()
    }

    /// Wait until every event queued before this call has been offered to every sink (those
    /// whose sink is unavailable stay held, see [`AuditCounters::held`]).
    pub async fn flush(&self) {
        self.ask(Msg::Flush).await;
    }

    /// Flush, then move what unavailable sinks still owe to the spill directory (dropped and
    /// counted without one): for an engine that is closing.
    pub async fn close(&self) {
        self.ask(Msg::Close).await;
    }

    async fn ask(&self, msg: fn(oneshot::Sender<()>) -> Msg) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(msg(done)).await.is_ok() {
            self.flush_requested.notify_one();
            let _ = wait.await;
        }
    }

    pub fn counters(&self) -> AuditCounters {
        let c = &self.counters;
        AuditCounters {
            recorded: c.recorded.load(Ordering::Relaxed),
            dropped_queue_full: c.dropped_queue_full.load(Ordering::Relaxed),
            dropped_sink_error: c.dropped_sink_error.load(Ordering::Relaxed),
            held: c.held.load(Ordering::Relaxed),
            spilled: c.spilled.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
        }
    }

    fn warn_drop(&self) {
        // Seconds on the monotonic clock: this only spaces out log lines.
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let now = i64::try_from(
            START
                .get_or_init(std::time::Instant::now)
                .elapsed()
                .as_secs(),
        )
        .unwrap_or(i64::MAX)
            + 1;
        let last = self.counters.last_drop_warning.load(Ordering::Relaxed);
        if now > last
            && self
                .counters
                .last_drop_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(
                dropped = self.counters.dropped_queue_full.load(Ordering::Relaxed),
                capacity = self.capacity,
                "audit queue full: events dropped (sinks too slow for the event rate)"
            );
        }
    }
}

struct Writer {
    rx: mpsc::Receiver<Msg>,
    flush_requested: Arc<Notify>,
    /// Each sink with the batches it owes.
    held: Vec<Held>,
    batch_size: usize,
    flush_interval: Duration,
    counters: Arc<Counters>,
}

impl Writer {
    async fn run(mut self) {
        let mut msgs = Vec::with_capacity(self.batch_size);
        // What earlier runs spilled is offered first.
        self.retry_held(true).await;
        loop {
            // Idle: wait for the first message, or for a held batch's retry.
            let due = self.held.iter().filter_map(Held::due).min();
            let received = match due {
                None => self.rx.recv().await,
                Some(at) => tokio::select! {
                    m = self.rx.recv() => m,
                    _ = tokio::time::sleep_until(at.into()) => {
                        self.retry_held(false).await;
                        continue;
                    }
                },
            };
            let Some(first) = received else {
                // Every sender is gone: the engine was dropped or closed.
                self.retry_held(true).await;
                self.shut_down();
                return;
            };
            let flush_now = !matches!(first, Msg::Event(_));
            msgs.push(first);
            // Let a batch gather for the flush interval without being woken by every event
            // (a wake-up per event would cost each file operation a context switch), unless
            // someone waits for a flush.
            if !flush_now {
                tokio::select! {
                    _ = tokio::time::sleep(self.flush_interval) => {}
                    _ = self.flush_requested.notified() => {}
                }
            }
            // Write everything queued by now, a batch at a time.
            loop {
                while msgs.len() < self.batch_size {
                    match self.rx.try_recv() {
                        Ok(m) => msgs.push(m),
                        Err(_) => break,
                    }
                }
                let full = msgs.len() >= self.batch_size;
                self.process(&mut msgs).await;
                if !full {
                    break;
                }
            }
        }
    }

    /// Deliver the events of `msgs` in order, answering each flush once what preceded it is
    /// delivered.
    async fn process(&mut self, msgs: &mut Vec<Msg>) {
        let mut events = Vec::with_capacity(msgs.len());
        for msg in msgs.drain(..) {
            match msg {
                Msg::Event(e) => events.push(*e),
                Msg::Flush(done) => {
                    if !events.is_empty() {
                        self.deliver(&events).await;
                        events.clear();
                    }
                    // Held events are tried now: a flush after an outage delivers them.
                    self.retry_held(true).await;
                    let _ = done.send(());
                }
                Msg::Close(done) => {
                    if !events.is_empty() {
                        self.deliver(&events).await;
                        events.clear();
                    }
                    self.retry_held(true).await;
                    self.shut_down();
                    let _ = done.send(());
                }
            }
        }
        if !events.is_empty() {
            self.deliver(&events).await;
        }
    }

    async fn deliver(&mut self, events: &[AuditEvent]) {
        let n = events.len() as u64;
        metrics::gauge!("tarbox_audit_queue_depth").set(self.rx.len() as f64);
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        metrics::histogram!("tarbox_audit_batch_size").record(n as f64);
        let mut out = Outcome::default();
        for h in &mut self.held {
            out += h.offer(events).await;
        }
        self.account(out);
    }

    /// Offer held batches to their sinks: those due, or all with `now`.
    async fn retry_held(&mut self, now: bool) {
        let mut out = Outcome::default();
        for h in &mut self.held {
            out += h.retry(now).await;
        }
        self.account(out);
    }

    /// Spill (or drop) what the sinks still owe.
    fn shut_down(&mut self) {
        let mut out = Outcome::default();
        for h in &mut self.held {
            out += h.shut_down();
        }
        self.account(out);
    }

    fn account(&self, out: Outcome) {
        let c = &self.counters;
        c.delivered.fetch_add(out.delivered, Ordering::Relaxed);
        if out.dropped > 0 {
            c.dropped_sink_error
                .fetch_add(out.dropped, Ordering::Relaxed);
            metrics::counter!("tarbox_audit_dropped_total", "reason" => "sink_error")
                .increment(out.dropped);
        }
        if out.spilled > 0 {
            c.spilled.fetch_add(out.spilled, Ordering::Relaxed);
            metrics::counter!("tarbox_audit_spilled_total").increment(out.spilled);
        }
        let held: usize = self.held.iter().map(Held::len).sum();
        c.held.store(held as u64, Ordering::Relaxed);
    }
}
