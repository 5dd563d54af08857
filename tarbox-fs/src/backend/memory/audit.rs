//! The memory backend's audit table: events in day partitions, filtered and aggregated with the
//! reference semantics of [`crate::audit`].

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::MemoryBackend;
use crate::audit::{
    AuditEvent, AuditFilter, AuditOrder, SeriesPoint, StatsKey, StatsRow, aggregate, series,
};
use crate::backend::{
    AUDIT_PARTITION_NS, AuditPartition, AuditStore, ExpiryReport, partition_start,
};
use crate::error::BackendResult;
use crate::types::{TenantId, Timestamp};

#[derive(Debug, Default)]
pub(super) struct AuditLog {
    /// Partition start (ns) -> its events in sequence order.
    partitions: BTreeMap<i64, Vec<AuditEvent>>,
    next_seq: u64,
}

impl AuditLog {
    pub(super) fn append(&mut self, events: impl IntoIterator<Item = AuditEvent>) {
        for mut e in events {
            self.next_seq += 1;
            e.seq = self.next_seq;
            e.in_store = false;
            let start = partition_start(e.time).0;
            self.partitions.entry(start).or_default().push(e);
        }
    }

    fn matching<'a>(&'a self, filter: &'a AuditFilter) -> impl Iterator<Item = &'a AuditEvent> {
        self.partitions
            .values()
            .flatten()
            .filter(move |e| filter.matches(e))
    }
}

#[async_trait]
impl AuditStore for MemoryBackend {
    async fn insert_audit(&self, events: &[AuditEvent]) -> BackendResult<()> {
        self.lock().audit.append(events.iter().cloned());
        Ok(())
    }

    async fn query_audit(&self, filter: &AuditFilter) -> BackendResult<Vec<AuditEvent>> {
        let store = self.lock();
        let mut out: Vec<AuditEvent> = store.audit.matching(filter).cloned().collect();
        out.sort_by_key(|e| e.seq);
        if filter.order == AuditOrder::NewestFirst {
            out.reverse();
        }
        if filter.limit > 0 {
            out.truncate(filter.limit);
        }
        Ok(out)
    }

    async fn audit_stats(
        &self,
        filter: &AuditFilter,
        key: StatsKey,
        top: usize,
    ) -> BackendResult<Vec<StatsRow>> {
        let store = self.lock();
        Ok(aggregate(store.audit.matching(filter), key, top))
    }

    async fn audit_series(
        &self,
        filter: &AuditFilter,
        interval_ns: i64,
    ) -> BackendResult<Vec<SeriesPoint>> {
        let store = self.lock();
        Ok(series(store.audit.matching(filter), interval_ns))
    }

    async fn ensure_audit_partitions(&self, from: Timestamp, to: Timestamp) -> BackendResult<()> {
        let mut store = self.lock();
        let mut start = partition_start(from).0;
        while start <= to.0 {
            store.audit.partitions.entry(start).or_default();
            start += AUDIT_PARTITION_NS;
        }
        Ok(())
    }

    async fn audit_partitions(&self) -> BackendResult<Vec<AuditPartition>> {
        let store = self.lock();
        Ok(store
            .audit
            .partitions
            .keys()
            .map(|&start| AuditPartition {
                start: Timestamp(start),
                end: Timestamp(start + AUDIT_PARTITION_NS),
            })
            .collect())
    }

    async fn expire_audit(
        &self,
        default_cutoff: Timestamp,
        cutoffs: &[(TenantId, Timestamp)],
    ) -> BackendResult<ExpiryReport> {
        let oldest_kept = cutoffs
            .iter()
            .map(|c| c.1)
            .fold(default_cutoff, Timestamp::min);
        let mut report = ExpiryReport::default();
        let mut store = self.lock();
        let parts = &mut store.audit.partitions;
        let expired: Vec<i64> = parts
            .keys()
            .copied()
            .filter(|&start| start + AUDIT_PARTITION_NS <= oldest_kept.0)
            .collect();
        for start in expired {
            parts.remove(&start);
            report.partitions_dropped += 1;
        }
        let cutoff_of = |tenant: TenantId| {
            cutoffs
                .iter()
                .find(|c| c.0 == tenant)
                .map_or(default_cutoff, |c| c.1)
        };
        for events in parts.values_mut() {
            let before = events.len();
            events.retain(|e| e.time >= cutoff_of(e.tenant_id));
            report.events_deleted += (before - events.len()) as u64;
        }
        Ok(report)
    }
}
