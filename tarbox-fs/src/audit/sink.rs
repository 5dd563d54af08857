//! Where audit events go: the store's audit table, JSON lines, tracing, or your own sink.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::AuditEvent;
use super::store::AuditStore;

/// Why a sink could not take a batch.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Refused for good: the batch is counted as dropped for that sink.
    #[error("audit sink {sink} failed")]
    Failed {
        sink: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Unreachable for now (a database restarting): the batch is held and retried.
    #[error("audit sink {sink} is unavailable")]
    Unavailable {
        sink: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl SinkError {
    /// `sink` cannot be reached now; the batch is worth retrying.
    pub fn unavailable(
        sink: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> SinkError {
        SinkError::Unavailable {
            sink,
            source: source.into(),
        }
    }

    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, SinkError::Unavailable { .. })
    }

    /// A failure of `sink`, keeping its cause.
    pub fn failed(
        sink: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> SinkError {
        SinkError::Failed {
            sink,
            source: source.into(),
        }
    }
}

/// A destination of audit events. Called by the auditor's background task only, one batch at a
/// time, in order; a slow sink delays later batches, never a file operation.
#[async_trait]
pub trait AuditSink: Send + Sync + 'static {
    /// Short name for logs and metrics.
    fn name(&self) -> &'static str;

    /// Take a batch. On [`SinkError::Unavailable`] the batch is held and offered again later (in
    /// order, before anything newer); on any other error it counts as dropped for this sink.
    async fn write(&self, events: &[AuditEvent]) -> Result<(), SinkError>;
}

/// The store's audit table: queryable with [`crate::Engine::audit_query`]. Skips events the store
/// already wrote in their own transaction (strict mode).
#[derive(Debug)]
pub struct StoreSink {
    store: Arc<dyn AuditStore>,
}

impl StoreSink {
    pub fn new(store: Arc<dyn AuditStore>) -> StoreSink {
        StoreSink { store }
    }
}

#[async_trait]
impl AuditSink for StoreSink {
    fn name(&self) -> &'static str {
        "store"
    }

    async fn write(&self, events: &[AuditEvent]) -> Result<(), SinkError> {
        // Strict-mode changes are already stored; copy the batch only when it has some.
        let pending: Vec<AuditEvent>;
        let events = if events.iter().any(|e| e.in_store) {
            pending = events.iter().filter(|e| !e.in_store).cloned().collect();
            &pending[..]
        } else {
            events
        };
        if events.is_empty() {
            return Ok(());
        }
        self.store.insert_audit(events).await.map_err(|e| match e {
            crate::error::BackendError::Unavailable(_) => SinkError::unavailable("store", e),
            e => SinkError::failed("store", e),
        })
    }
}

/// One JSON object per line (the schema of [`AuditEvent`]), for shipping to ELK, Loki or a SIEM.
pub struct JsonLinesSink {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl std::fmt::Debug for JsonLinesSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JsonLinesSink")
    }
}

impl JsonLinesSink {
    /// Append to `path` (created if missing).
    pub fn file(path: &Path) -> std::io::Result<JsonLinesSink> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(JsonLinesSink::writer(Box::new(file)))
    }

    pub fn stdout() -> JsonLinesSink {
        JsonLinesSink::writer(Box::new(std::io::stdout()))
    }

    /// Any writer (a pipe, a socket, a buffer in tests).
    pub fn writer(out: Box<dyn Write + Send>) -> JsonLinesSink {
        JsonLinesSink {
            out: Arc::new(Mutex::new(out)),
        }
    }
}

#[async_trait]
impl AuditSink for JsonLinesSink {
    fn name(&self) -> &'static str {
        "json_lines"
    }

    async fn write(&self, events: &[AuditEvent]) -> Result<(), SinkError> {
        let fail = |e: Box<dyn std::error::Error + Send + Sync>| SinkError::failed("json_lines", e);
        let mut buf = Vec::with_capacity(events.len() * 256);
        for e in events {
            serde_json::to_writer(&mut buf, e).map_err(|e| fail(e.into()))?;
            buf.push(b'\n');
        }
        let out = self.out.clone();
        // The writer may block (a full pipe, a slow disk): keep it off the async workers.
        tokio::task::spawn_blocking(move || {
            let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
            out.write_all(&buf)?;
            out.flush()
        })
        .await
        .map_err(|e| fail(e.into()))?
        .map_err(|e| fail(e.into()))
    }
}

/// Each event as a `tracing` event at INFO on target `tarbox::audit`.
#[derive(Debug, Default)]
pub struct TracingSink;

#[async_trait]
impl AuditSink for TracingSink {
    fn name(&self) -> &'static str {
        "tracing"
    }

    async fn write(&self, events: &[AuditEvent]) -> Result<(), SinkError> {
        for e in events {
            tracing::info!(
                target: "tarbox::audit",
                tenant = %e.tenant,
                op = e.op.as_str(),
                path = e.path.as_deref().unwrap_or(""),
                path2 = e.path2.as_deref().unwrap_or(""),
                bytes = e.bytes,
                result = e.result(),
                uid = e.uid,
                pid = e.pid,
                process = e.process.as_deref().unwrap_or(""),
                duration_us = e.duration_us,
            );
        }
        Ok(())
    }
}
