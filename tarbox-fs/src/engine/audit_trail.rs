//! The audit trail as administrators use it: per-tenant settings, queries, statistics,
//! retention and partition upkeep.

use std::time::Duration;

use tracing::{info, warn};

use super::{Engine, TenantInfo, Volume};
use crate::audit::{AUDIT_PARTITION_NS, AuditPartition, ExpiryReport};
use crate::audit::{
    AuditCounters, AuditEvent, AuditFilter, AuditOrder, SeriesPoint, StatsKey, StatsRow,
};
use crate::backend::TenantAudit;
use crate::error::{FsError, FsResult};
use crate::types::{TenantId, Timestamp};

/// Partitions kept ready ahead of the clock.
const PARTITION_DAYS_AHEAD: i64 = 7;
/// Longest retention accepted, in days (about 100 years).
const MAX_RETENTION_DAYS: u32 = 36_500;

impl Engine {
    /// Set a tenant's audit level and retention (`None` restores the engine default). Mounts
    /// follow a level change within their head-poll interval.
    pub async fn set_audit(&self, tenant: &str, audit: TenantAudit) -> FsResult<TenantInfo> {
        if let Some(days) = audit.retention_days {
            if days == 0 || days > MAX_RETENTION_DAYS {
                return Err(FsError::BadInput(format!(
                    "invalid audit retention {days} days: must be 1 to {MAX_RETENTION_DAYS}"
                )));
            }
        }
        let record = self.active_tenant(tenant).await?;
        self.shared.backend.set_audit(record.id, audit).await?;
        self.tenant_info(tenant).await
    }

    /// Events matching `filter`.
    pub async fn audit_query(&self, filter: &AuditFilter) -> FsResult<Vec<AuditEvent>> {
        Ok(self.shared.backend.query_audit(filter).await?)
    }

    /// The top `top` files, directories, processes, pods or users by activity over the `close`
    /// records matching `filter`.
    pub async fn audit_stats(
        &self,
        filter: &AuditFilter,
        key: StatsKey,
        top: usize,
    ) -> FsResult<Vec<StatsRow>> {
        Ok(self.shared.backend.audit_stats(filter, key, top).await?)
    }

    /// Activity per `interval` over the events matching `filter`.
    pub async fn audit_series(
        &self,
        filter: &AuditFilter,
        interval: Duration,
    ) -> FsResult<Vec<SeriesPoint>> {
        let ns = i64::try_from(interval.as_nanos()).unwrap_or(i64::MAX);
        if ns <= 0 {
            return Err(FsError::BadInput(
                "the series interval must be positive".into(),
            ));
        }
        Ok(self.shared.backend.audit_series(filter, ns).await?)
    }

    /// Wait until every event recorded so far has been offered to every sink.
    pub async fn flush_audit(&self) {
        self.shared.auditor.flush().await;
    }

    /// Delivery counters of the audit queue since the engine started.
    pub fn audit_counters(&self) -> AuditCounters {
        self.shared.auditor.counters()
    }

    /// The audit table's partitions.
    pub async fn audit_partitions(&self) -> FsResult<Vec<AuditPartition>> {
        Ok(self.shared.backend.audit_partitions().await?)
    }

    /// Create the audit partitions from today to a week ahead (by the engine's clock).
    pub async fn prepare_audit_partitions(&self) -> FsResult<()> {
        let now = self.shared.now();
        let ahead = Timestamp(
            now.0
                .saturating_add(PARTITION_DAYS_AHEAD * AUDIT_PARTITION_NS),
        );
        Ok(self
            .shared
            .backend
            .ensure_audit_partitions(now, ahead)
            .await?)
    }

    /// Remove events older than their tenant's retention: whole partitions where every tenant's
    /// retention has passed, single rows of tenants with a shorter retention.
    pub async fn expire_audit(&self) -> FsResult<ExpiryReport> {
        let now = self.shared.now();
        let cutoff =
            |days: u32| Timestamp(now.0.saturating_sub(i64::from(days) * AUDIT_PARTITION_NS));
        let default_cutoff = cutoff(self.shared.config.audit.default_retention_days);
        let cutoffs: Vec<(TenantId, Timestamp)> = self
            .shared
            .backend
            .list_tenants()
            .await?
            .into_iter()
            .filter_map(|t| t.audit.retention_days.map(|d| (t.id, cutoff(d))))
            .collect();
        let report = self
            .shared
            .backend
            .expire_audit(default_cutoff, &cutoffs)
            .await?;
        if report.partitions_dropped > 0 || report.events_deleted > 0 {
            info!(
                partitions = report.partitions_dropped,
                events = report.events_deleted,
                "expired audit events"
            );
        }
        Ok(report)
    }

    /// Keep partitions ahead of the clock and expire old events, now and every `interval`.
    pub fn spawn_audit_maintenance(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let engine = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = engine.prepare_audit_partitions().await {
                    warn!(error = %e, "creating audit partitions failed");
                }
                if let Err(e) = engine.expire_audit().await {
                    warn!(error = %e, "expiring audit events failed");
                }
                tokio::time::sleep(interval).await;
            }
        })
    }
}

/// What the control directory shows of a volume's audit trail (`/.tarbox/audit/recent`).
impl Volume {
    /// The tenant's `limit` most recent audit events, newest first.
    pub(crate) async fn recent_audit(&self, limit: usize) -> FsResult<Vec<AuditEvent>> {
        let filter = AuditFilter {
            tenant: Some(self.tenant_name().to_string()),
            limit,
            order: AuditOrder::NewestFirst,
            ..AuditFilter::default()
        };
        Ok(self.backend().query_audit(&filter).await?)
    }

    /// Wait until every event recorded so far has been offered to every sink.
    pub(crate) async fn flush_audit(&self) {
        self.shared().auditor.flush().await;
    }
}
