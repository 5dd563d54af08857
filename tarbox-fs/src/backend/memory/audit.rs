//! The memory backend's audit table: events in day partitions, filtered and aggregated with the
//! reference semantics of [`crate::audit`].

use std::collections::{BTreeMap, VecDeque};

use async_trait::async_trait;

use super::MemoryBackend;
use crate::audit::{AUDIT_PARTITION_NS, AuditPartition, AuditStore, ExpiryReport, partition_start};
use crate::audit::{
    AuditEvent, AuditFilter, AuditOrder, SeriesPoint, StatsKey, StatsRow, aggregate, series,
};
use crate::error::BackendResult;
use crate::types::{TenantId, Timestamp};

/// Events the memory store keeps at most; past this the oldest go first (a scratch mount at the
/// `full` level must not grow without bound between hourly expiries).
pub const MEMORY_AUDIT_EVENTS: usize = 1_000_000;

#[derive(Debug, Default)]
pub(super) struct AuditLog {
    /// Partition start (ns) -> its events in sequence order.
    partitions: BTreeMap<i64, VecDeque<AuditEvent>>,
    len: usize,
    next_seq: u64,
}

impl AuditLog {
    pub(super) fn append(&mut self, events: impl IntoIterator<Item = AuditEvent>) {
        for mut e in events {
            self.next_seq += 1;
            e.seq = self.next_seq;
            e.in_store = false;
            let start = partition_start(e.time).0;
            self.partitions.entry(start).or_default().push_back(e);
            self.len += 1;
        }
        while self.len > MEMORY_AUDIT_EVENTS {
            let Some(mut oldest) = self.partitions.first_entry() else {
                break;
            };
            if oldest.get_mut().pop_front().is_some() {
                self.len -= 1;
            } else {
                oldest.remove();
            }
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
        self.audit_log().append(events.iter().cloned());
        Ok(())
    }

    async fn query_audit(&self, filter: &AuditFilter) -> BackendResult<Vec<AuditEvent>> {
        let log = self.audit_log();
        let mut out: Vec<AuditEvent> = log.matching(filter).cloned().collect();
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
        let log = self.audit_log();
        Ok(aggregate(log.matching(filter), key, top))
    }

    async fn audit_series(
        &self,
        filter: &AuditFilter,
        interval_ns: i64,
    ) -> BackendResult<Vec<SeriesPoint>> {
        let log = self.audit_log();
        Ok(series(log.matching(filter), interval_ns))
    }

    async fn ensure_audit_partitions(&self, from: Timestamp, to: Timestamp) -> BackendResult<()> {
        let mut log = self.audit_log();
        let mut start = partition_start(from).0;
        while start <= to.0 {
            log.partitions.entry(start).or_default();
            start += AUDIT_PARTITION_NS;
        }
        Ok(())
    }

    async fn audit_partitions(&self) -> BackendResult<Vec<AuditPartition>> {
        let log = self.audit_log();
        Ok(log
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
        let cutoff_of = |tenant: TenantId| {
            cutoffs
                .iter()
                .find(|c| c.0 == tenant)
                .map_or(default_cutoff, |c| c.1)
        };
        let mut report = ExpiryReport::default();
        let mut log = self.audit_log();
        let mut removed = 0;
        // Only days some tenant no longer keeps: recent and prepared partitions stay.
        let latest_cutoff = cutoffs
            .iter()
            .map(|c| c.1)
            .fold(default_cutoff, Timestamp::max);
        // A partition goes whole when no event in it belongs to a tenant still keeping that day.
        let droppable: Vec<i64> = log
            .partitions
            .iter()
            .filter(|(start, events)| {
                let end = Timestamp(**start + AUDIT_PARTITION_NS);
                if end > latest_cutoff {
                    return false;
                }
                let every_tenant_done = cutoffs.iter().all(|c| c.1 >= end) && default_cutoff >= end;
                if events.is_empty() {
                    every_tenant_done
                } else {
                    events.iter().all(|e| cutoff_of(e.tenant_id) >= end)
                }
            })
            .map(|(start, _)| *start)
            .collect();
        for start in droppable {
            if let Some(events) = log.partitions.remove(&start) {
                removed += events.len();
            }
            report.partitions_dropped += 1;
        }
        for events in log.partitions.values_mut() {
            let before = events.len();
            events.retain(|e| e.time >= cutoff_of(e.tenant_id));
            removed += before - events.len();
            report.events_deleted += (before - events.len()) as u64;
        }
        log.len -= removed;
        Ok(report)
    }
}
