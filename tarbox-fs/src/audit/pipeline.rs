//! The bounded queue between file operations and the sinks.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::warn;

use super::{AuditConfig, AuditEvent, AuditSink, Overflow};

enum Msg {
    Event(Box<AuditEvent>),
    /// Write everything queued before this, then answer.
    Flush(oneshot::Sender<()>),
}

/// Delivery counters since the engine started. `recorded = written_per_sink + dropped_*` once
/// the queue is drained, for every sink.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AuditCounters {
    /// Events handed to the auditor.
    pub recorded: u64,
    /// Events dropped because the queue was full (no sink got them).
    pub dropped_queue_full: u64,
    /// Event deliveries a sink refused (counted once per sink and event).
    pub dropped_sink_error: u64,
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
        let writer = Writer {
            rx,
            flush_requested: flush_requested.clone(),
            sinks,
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

    /// Wait until every event queued before this call has been offered to every sink.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
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
    sinks: Vec<Arc<dyn AuditSink>>,
    batch_size: usize,
    flush_interval: Duration,
    counters: Arc<Counters>,
}

impl Writer {
    async fn run(mut self) {
        let mut msgs = Vec::with_capacity(self.batch_size);
        loop {
            // Idle: wait for the first message.
            let Some(first) = self.rx.recv().await else {
                return; // every sender is gone: the engine was dropped
            };
            let flush_now = matches!(first, Msg::Flush(_));
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
    async fn process(&self, msgs: &mut Vec<Msg>) {
        let mut events = Vec::with_capacity(msgs.len());
        for msg in msgs.drain(..) {
            match msg {
                Msg::Event(e) => events.push(*e),
                Msg::Flush(done) => {
                    if !events.is_empty() {
                        self.deliver(&events).await;
                        events.clear();
                    }
                    let _ = done.send(());
                }
            }
        }
        if !events.is_empty() {
            self.deliver(&events).await;
        }
    }

    async fn deliver(&self, events: &[AuditEvent]) {
        let n = events.len() as u64;
        metrics::gauge!("tarbox_audit_queue_depth").set(self.rx.len() as f64);
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        metrics::histogram!("tarbox_audit_batch_size").record(n as f64);
        for sink in &self.sinks {
            match sink.write(events).await {
                Ok(()) => {
                    self.counters.delivered.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => {
                    self.counters
                        .dropped_sink_error
                        .fetch_add(n, Ordering::Relaxed);
                    metrics::counter!("tarbox_audit_dropped_total", "reason" => "sink_error", "sink" => sink.name())
                        .increment(n);
                    warn!(error = %e, events = n, "audit sink failed: batch dropped");
                }
            }
        }
    }
}
