//! Where the audit trail is kept and queried: an append-only, time-partitioned event table. Every
//! storage backend implements [`AuditStore`]; the audit pipeline only knows this trait.

use async_trait::async_trait;

use crate::audit::{AuditEvent, AuditFilter, SeriesPoint, StatsKey, StatsRow};
use crate::error::BackendResult;
use crate::types::{TenantId, Timestamp};

/// Width of one audit partition: a UTC day.
pub const AUDIT_PARTITION_NS: i64 = 86_400 * 1_000_000_000;

/// Start of the partition holding `t`.
pub fn partition_start(t: Timestamp) -> Timestamp {
    Timestamp(t.0.div_euclid(AUDIT_PARTITION_NS) * AUDIT_PARTITION_NS)
}

/// One time partition of the audit table: events with `start <= time < end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditPartition {
    pub start: Timestamp,
    pub end: Timestamp,
}

/// What [`AuditStore::expire_audit`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ExpiryReport {
    pub partitions_dropped: u64,
    pub events_deleted: u64,
}

/// Audit storage. Events are partitioned by time ([`AUDIT_PARTITION_NS`]); an insert never fails
/// for lack of a partition (the store creates it), and expiry drops whole partitions.
#[async_trait]
pub trait AuditStore: Send + Sync + std::fmt::Debug {
    /// Append events (each gets the next sequence number).
    async fn insert_audit(&self, events: &[AuditEvent]) -> BackendResult<()>;

    /// Events matching `filter`, in sequence order (see [`AuditFilter::order`]), at most
    /// `filter.limit` of them.
    async fn query_audit(&self, filter: &AuditFilter) -> BackendResult<Vec<AuditEvent>>;

    /// The top `top` keys by activity over the `close` events matching `filter`
    /// (semantics: [`crate::audit::aggregate`]).
    async fn audit_stats(
        &self,
        filter: &AuditFilter,
        key: StatsKey,
        top: usize,
    ) -> BackendResult<Vec<StatsRow>>;

    /// Per-interval activity of the events matching `filter` (semantics:
    /// [`crate::audit::series`]).
    async fn audit_series(
        &self,
        filter: &AuditFilter,
        interval_ns: i64,
    ) -> BackendResult<Vec<SeriesPoint>>;

    /// Make sure partitions exist for every instant in `from..=to`.
    async fn ensure_audit_partitions(&self, from: Timestamp, to: Timestamp) -> BackendResult<()>;

    /// Existing partitions, oldest first.
    async fn audit_partitions(&self) -> BackendResult<Vec<AuditPartition>>;

    /// Remove events older than their tenant's cutoff: `cutoffs` lists tenants with their own
    /// retention, every other tenant's events go at `default_cutoff`. Partitions entirely older
    /// than every cutoff are dropped whole; younger rows of tenants with a shorter retention are
    /// deleted.
    async fn expire_audit(
        &self,
        default_cutoff: Timestamp,
        cutoffs: &[(TenantId, Timestamp)],
    ) -> BackendResult<ExpiryReport>;
}
