//! The audit table in PostgreSQL: batched inserts as arrays, filters and aggregations as SQL,
//! day partitions created ahead and on demand, expiry by dropping partitions.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};

use super::PostgresBackend;
use super::convert::{is_no_partition, map_err, to_i64, to_u32, to_u64};
use crate::audit::{AUDIT_PARTITION_NS, AuditPartition, AuditStore, ExpiryReport, partition_start};
use crate::audit::{
    AuditEvent, AuditFilter, AuditOp, AuditOrder, HandleCounters, OpClass, PathMatch, ResultFilter,
    SeriesPoint, StatsKey, StatsRow, sort_rows,
};
use crate::error::{BackendError, BackendResult};
use crate::types::{Ino, LayerId, PodIdentity, TenantId, Timestamp};

const INSERT: &str = "INSERT INTO audit_events (at_ns, tenant_id, tenant_name, layer_id, op, \
     path, path2, ino, off, bytes, duration_us, errno, uid, gid, pid, process, node, mount, \
     pod_namespace, pod_name, pod_service_account, reads, writes, bytes_read, bytes_written, \
     detail) \
     SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], $5::text[], \
     $6::text[], $7::text[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], \
     $12::int[], $13::bigint[], $14::bigint[], $15::bigint[], $16::text[], $17::text[], \
     $18::text[], $19::text[], $20::text[], $21::text[], $22::bigint[], $23::bigint[], \
     $24::bigint[], $25::bigint[], $26::text[])";

const COLUMNS: &str = "seq, at_ns, tenant_id, tenant_name, layer_id, op, path, path2, ino, off, \
     bytes, duration_us, errno, uid, gid, pid, process, node, mount, pod_namespace, pod_name, \
     pod_service_account, reads, writes, bytes_read, bytes_written, detail";

/// Partitions: `audit_events_YYYYMMDD`, listed with their lower bound.
const LIST_PARTITIONS: &str = "SELECT c.relname::text FROM pg_inherits i \
     JOIN pg_class c ON c.oid = i.inhrelid \
     WHERE i.inhparent = 'audit_events'::regclass ORDER BY 1";

/// Partitions known to exist, so an insert asks the server only on a new day.
#[derive(Debug)]
pub(super) struct Partitions {
    pool: PgPool,
    known: Mutex<BTreeSet<i64>>,
}

impl Partitions {
    pub(super) fn new(pool: PgPool) -> Partitions {
        Partitions {
            pool,
            known: Mutex::new(BTreeSet::new()),
        }
    }

    /// Create (outside any transaction) the partitions of every event's day not known yet.
    pub(super) async fn ensure_for(&self, events: &[AuditEvent]) -> BackendResult<()> {
        let missing: BTreeSet<i64> = {
            let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            events
                .iter()
                .map(|e| partition_start(e.time).0)
                .filter(|d| !known.contains(d))
                .collect()
        };
        for day in missing {
            self.create(day).await?;
        }
        Ok(())
    }

    async fn create(&self, day: i64) -> BackendResult<()> {
        sqlx::query("SELECT tarbox_audit_partition($1)")
            .bind(day)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(day);
        Ok(())
    }

    fn forget(&self) {
        self.known.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// Insert `events` on `conn` with one statement.
pub(super) async fn insert(conn: &mut PgConnection, events: &[AuditEvent]) -> BackendResult<()> {
    let mut c = Columns::default();
    for e in events {
        c.push(e)?;
    }
    sqlx::query(INSERT)
        .bind(c.at_ns)
        .bind(c.tenant_id)
        .bind(c.tenant_name)
        .bind(c.layer_id)
        .bind(c.op)
        .bind(c.path)
        .bind(c.path2)
        .bind(c.ino)
        .bind(c.off)
        .bind(c.bytes)
        .bind(c.duration_us)
        .bind(c.errno)
        .bind(c.uid)
        .bind(c.gid)
        .bind(c.pid)
        .bind(c.process)
        .bind(c.node)
        .bind(c.mount)
        .bind(c.pod_namespace)
        .bind(c.pod_name)
        .bind(c.pod_sa)
        .bind(c.reads)
        .bind(c.writes)
        .bind(c.bytes_read)
        .bind(c.bytes_written)
        .bind(c.detail)
        .execute(conn)
        .await
        .map_err(map_err)?;
    Ok(())
}

/// Events as column arrays, for `UNNEST`.
#[derive(Default)]
struct Columns {
    at_ns: Vec<i64>,
    tenant_id: Vec<i64>,
    tenant_name: Vec<String>,
    layer_id: Vec<i64>,
    op: Vec<&'static str>,
    path: Vec<Option<String>>,
    path2: Vec<Option<String>>,
    ino: Vec<Option<i64>>,
    off: Vec<Option<i64>>,
    bytes: Vec<i64>,
    duration_us: Vec<i64>,
    errno: Vec<i32>,
    uid: Vec<i64>,
    gid: Vec<i64>,
    pid: Vec<i64>,
    process: Vec<Option<String>>,
    node: Vec<String>,
    mount: Vec<String>,
    pod_namespace: Vec<Option<String>>,
    pod_name: Vec<Option<String>>,
    pod_sa: Vec<Option<String>>,
    reads: Vec<Option<i64>>,
    writes: Vec<Option<i64>>,
    bytes_read: Vec<Option<i64>>,
    bytes_written: Vec<Option<i64>>,
    detail: Vec<Option<String>>,
}

impl Columns {
    fn push(&mut self, e: &AuditEvent) -> BackendResult<()> {
        let s = |v: &Option<Arc<str>>| v.as_deref().map(str::to_string);
        self.at_ns.push(e.time.0);
        self.tenant_id.push(e.tenant_id.0);
        self.tenant_name.push(e.tenant.to_string());
        self.layer_id.push(e.layer.0);
        self.op.push(e.op.as_str());
        self.path.push(s(&e.path));
        self.path2.push(s(&e.path2));
        self.ino
            .push(e.ino.map(|i| to_i64("inode number", i.0)).transpose()?);
        self.off
            .push(e.offset.map(|o| to_i64("offset", o)).transpose()?);
        self.bytes.push(to_i64("bytes", e.bytes)?);
        self.duration_us.push(to_i64("duration", e.duration_us)?);
        self.errno.push(e.errno);
        self.uid.push(i64::from(e.uid));
        self.gid.push(i64::from(e.gid));
        self.pid.push(i64::from(e.pid));
        self.process.push(s(&e.process));
        self.node.push(e.node.to_string());
        self.mount.push(e.mount.to_string());
        let pod = e.pod.as_deref();
        self.pod_namespace.push(pod.map(|p| p.namespace.clone()));
        self.pod_name.push(pod.map(|p| p.name.clone()));
        self.pod_sa.push(pod.map(|p| p.service_account.clone()));
        let h = e.handle;
        let counter = |f: fn(&HandleCounters) -> u64| -> BackendResult<Option<i64>> {
            h.as_ref().map(|h| to_i64("counter", f(h))).transpose()
        };
        self.reads.push(counter(|h| h.reads)?);
        self.writes.push(counter(|h| h.writes)?);
        self.bytes_read.push(counter(|h| h.bytes_read)?);
        self.bytes_written.push(counter(|h| h.bytes_written)?);
        self.detail.push(s(&e.detail));
        Ok(())
    }
}

fn event_from_row(row: &PgRow) -> BackendResult<AuditEvent> {
    fn col<'r, T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>>(
        row: &'r PgRow,
        name: &str,
    ) -> BackendResult<T> {
        row.try_get(name).map_err(map_err)
    }
    let arc = |v: Option<String>| v.map(Arc::<str>::from);
    let op: String = col(row, "op")?;
    let op: AuditOp = op.parse().map_err(|e: String| BackendError::Corrupt(e))?;
    let reads: Option<i64> = col(row, "reads")?;
    let handle = match reads {
        None => None,
        Some(reads) => Some(HandleCounters {
            reads: to_u64("reads", reads)?,
            writes: to_u64("writes", col::<Option<i64>>(row, "writes")?.unwrap_or(0))?,
            bytes_read: to_u64(
                "bytes read",
                col::<Option<i64>>(row, "bytes_read")?.unwrap_or(0),
            )?,
            bytes_written: to_u64(
                "bytes written",
                col::<Option<i64>>(row, "bytes_written")?.unwrap_or(0),
            )?,
        }),
    };
    let pod_name: Option<String> = col(row, "pod_name")?;
    let pod = match pod_name {
        None => None,
        Some(name) => Some(Arc::new(PodIdentity {
            namespace: col::<Option<String>>(row, "pod_namespace")?.unwrap_or_default(),
            name,
            service_account: col::<Option<String>>(row, "pod_service_account")?.unwrap_or_default(),
        })),
    };
    Ok(AuditEvent {
        seq: to_u64("sequence number", col(row, "seq")?)?,
        time: Timestamp(col(row, "at_ns")?),
        tenant: Arc::from(col::<String>(row, "tenant_name")?),
        tenant_id: TenantId(col(row, "tenant_id")?),
        layer: LayerId(col(row, "layer_id")?),
        op,
        path: arc(col(row, "path")?),
        path2: arc(col(row, "path2")?),
        ino: col::<Option<i64>>(row, "ino")?
            .map(|i| to_u64("inode number", i).map(Ino))
            .transpose()?,
        offset: col::<Option<i64>>(row, "off")?
            .map(|o| to_u64("offset", o))
            .transpose()?,
        bytes: to_u64("bytes", col(row, "bytes")?)?,
        duration_us: to_u64("duration", col(row, "duration_us")?)?,
        errno: col(row, "errno")?,
        uid: to_u32("uid", col(row, "uid")?)?,
        gid: to_u32("gid", col(row, "gid")?)?,
        pid: to_u32("pid", col(row, "pid")?)?,
        process: arc(col(row, "process")?),
        node: Arc::from(col::<String>(row, "node")?),
        mount: Arc::from(col::<String>(row, "mount")?),
        pod,
        handle,
        detail: arc(col(row, "detail")?),
        in_store: false,
    })
}

/// A glob as a `LIKE` pattern (backslash escapes).
fn glob_to_like(glob: &str) -> String {
    glob.split('*')
        .map(|part| {
            part.split('?')
                .map(like_escape)
                .collect::<Vec<_>>()
                .join("_")
        })
        .collect::<Vec<_>>()
        .join("%")
}

/// `s` matched literally by `LIKE`.
fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Append `filter`'s conditions (but not its limit or order) as a `WHERE` clause.
fn push_where(qb: &mut QueryBuilder<Postgres>, f: &AuditFilter) -> BackendResult<()> {
    qb.push(" WHERE true");
    if let Some(t) = &f.tenant {
        qb.push(" AND tenant_name = ").push_bind(t.clone());
    }
    if let Some(s) = f.since {
        qb.push(" AND at_ns >= ").push_bind(s.0);
    }
    if let Some(u) = f.until {
        qb.push(" AND at_ns < ").push_bind(u.0);
    }
    if !f.ops.is_empty() {
        let ops: Vec<&'static str> = f.ops.iter().map(|o| o.as_str()).collect();
        qb.push(" AND op = ANY(").push_bind(ops).push(")");
    }
    match &f.path {
        None => {}
        Some(PathMatch::Prefix(p)) => {
            let p = p.trim_end_matches('/');
            if !p.is_empty() {
                let under = format!("{}/%", like_escape(p));
                qb.push(" AND (path = ")
                    .push_bind(p.to_string())
                    .push(" OR path LIKE ")
                    .push_bind(under.clone())
                    .push(" OR path2 = ")
                    .push_bind(p.to_string())
                    .push(" OR path2 LIKE ")
                    .push_bind(under)
                    .push(")");
            }
        }
        Some(PathMatch::Glob(g)) => {
            let like = glob_to_like(g);
            qb.push(" AND (path LIKE ")
                .push_bind(like.clone())
                .push(" OR path2 LIKE ")
                .push_bind(like)
                .push(")");
        }
    }
    if let Some(uid) = f.uid {
        qb.push(" AND uid = ").push_bind(i64::from(uid));
    }
    if let Some(pid) = f.pid {
        qb.push(" AND pid = ").push_bind(i64::from(pid));
    }
    if let Some(pod) = &f.pod {
        qb.push(" AND (pod_name = ")
            .push_bind(pod.clone())
            .push(" OR pod_namespace || '/' || pod_name = ")
            .push_bind(pod.clone())
            .push(")");
    }
    match f.result {
        None => {}
        Some(ResultFilter::Ok) => {
            qb.push(" AND errno = 0");
        }
        Some(ResultFilter::Error) => {
            qb.push(" AND errno <> 0");
        }
        Some(ResultFilter::Denied) => {
            let denials = vec![
                libc::EACCES,
                libc::EPERM,
                libc::ENOSPC,
                libc::EDQUOT,
                libc::EROFS,
            ];
            qb.push(" AND errno = ANY(").push_bind(denials).push(")");
        }
        Some(ResultFilter::Errno(e)) => {
            qb.push(" AND errno = ").push_bind(e);
        }
    }
    if let Some(seq) = f.after_seq {
        qb.push(" AND seq > ")
            .push_bind(to_i64("sequence number", seq)?);
    }
    Ok(())
}

/// The SQL of a statistics key (mirrors `crate::audit::stats_key`).
fn key_sql(key: StatsKey) -> &'static str {
    match key {
        StatsKey::File => "COALESCE(path, '?')",
        StatsKey::Directory => {
            "COALESCE(NULLIF(regexp_replace(COALESCE(path, '/'), '/[^/]*$', ''), ''), '/')"
        }
        StatsKey::Process => "COALESCE(process, pid::text)",
        StatsKey::Pod => {
            "CASE WHEN pod_name IS NULL THEN '-' ELSE pod_namespace || '/' || pod_name END"
        }
        StatsKey::Uid => "uid::text",
    }
}

/// The day a partition name stands for, as its start.
fn partition_of_name(name: &str) -> Option<Timestamp> {
    let digits = name.strip_prefix("audit_events_")?;
    let date: jiff::civil::Date = jiff::civil::Date::strptime("%Y%m%d", digits).ok()?;
    let ts = date.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp();
    i64::try_from(ts.as_nanosecond()).ok().map(Timestamp)
}

impl PostgresBackend {
    async fn partition_names(&self) -> BackendResult<Vec<(String, Timestamp)>> {
        let names: Vec<String> = sqlx::query_scalar(LIST_PARTITIONS)
            .fetch_all(self.pool())
            .await
            .map_err(map_err)?;
        Ok(names
            .into_iter()
            .filter_map(|n| partition_of_name(&n).map(|t| (n, t)))
            .collect())
    }
}

#[async_trait]
impl AuditStore for PostgresBackend {
    async fn insert_audit(&self, events: &[AuditEvent]) -> BackendResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        self.partitions.ensure_for(events).await?;
        let mut conn = self.pool().acquire().await.map_err(map_err)?;
        match insert(&mut conn, events).await {
            // A partition was dropped behind our back (expiry of a clock-skewed event): make it
            // again and retry once.
            Err(e) if is_no_partition(&e) => {
                self.partitions.forget();
                self.partitions.ensure_for(events).await?;
                insert(&mut conn, events).await
            }
            other => other,
        }
    }

    async fn query_audit(&self, filter: &AuditFilter) -> BackendResult<Vec<AuditEvent>> {
        let mut qb = QueryBuilder::new(format!("SELECT {COLUMNS} FROM audit_events"));
        push_where(&mut qb, filter)?;
        qb.push(match filter.order {
            AuditOrder::OldestFirst => " ORDER BY seq",
            AuditOrder::NewestFirst => " ORDER BY seq DESC",
        });
        if filter.limit > 0 {
            qb.push(" LIMIT ")
                .push_bind(to_i64("limit", filter.limit as u64)?);
        }
        let rows = qb.build().fetch_all(self.pool()).await.map_err(map_err)?;
        rows.iter().map(event_from_row).collect()
    }

    async fn audit_stats(
        &self,
        filter: &AuditFilter,
        key: StatsKey,
        top: usize,
    ) -> BackendResult<Vec<StatsRow>> {
        let mut qb = QueryBuilder::new(format!(
            "SELECT * FROM (SELECT {} AS key, count(*) AS opens, \
             COALESCE(sum(reads), 0)::bigint AS reads, \
             COALESCE(sum(writes), 0)::bigint AS writes, \
             COALESCE(sum(bytes_read), 0)::bigint AS bytes_read, \
             COALESCE(sum(bytes_written), 0)::bigint AS bytes_written FROM audit_events",
            key_sql(key)
        ));
        push_where(&mut qb, filter)?;
        qb.push(
            " AND op = 'close' GROUP BY 1) s ORDER BY reads + writes DESC, \
             bytes_read + bytes_written DESC, key COLLATE \"C\" LIMIT ",
        )
        .push_bind(to_i64("top", top as u64)?);
        let rows = qb.build().fetch_all(self.pool()).await.map_err(map_err)?;
        let mut out = rows
            .iter()
            .map(|r| {
                let n = |c: &str| -> BackendResult<u64> {
                    to_u64(c, r.try_get::<i64, _>(c).map_err(map_err)?)
                };
                Ok(StatsRow {
                    key: r.try_get("key").map_err(map_err)?,
                    opens: n("opens")?,
                    reads: n("reads")?,
                    writes: n("writes")?,
                    bytes_read: n("bytes_read")?,
                    bytes_written: n("bytes_written")?,
                })
            })
            .collect::<BackendResult<Vec<_>>>()?;
        // Byte-order ties exactly as the reference implementation breaks them.
        sort_rows(&mut out);
        Ok(out)
    }

    async fn audit_series(
        &self,
        filter: &AuditFilter,
        interval_ns: i64,
    ) -> BackendResult<Vec<SeriesPoint>> {
        let interval = interval_ns.max(1);
        let changes: Vec<&'static str> = AuditOp::ALL
            .iter()
            .filter(|o| o.class() == OpClass::Change)
            .map(|o| o.as_str())
            .collect();
        let mut qb = QueryBuilder::new("SELECT at_ns - mod(mod(at_ns, ");
        qb.push_bind(interval)
            .push(") + ")
            .push_bind(interval)
            .push(", ")
            .push_bind(interval)
            .push(
                ") AS start, count(*) FILTER (WHERE op = 'close') AS opens, \
                 COALESCE(sum(reads), 0)::bigint AS reads, \
                 COALESCE(sum(writes), 0)::bigint AS writes, \
                 COALESCE(sum(bytes_read), 0)::bigint AS bytes_read, \
                 COALESCE(sum(bytes_written), 0)::bigint AS bytes_written, \
                 count(*) FILTER (WHERE errno = 0 AND op = ANY(",
            )
            .push_bind(changes)
            .push(")) AS changes FROM audit_events");
        push_where(&mut qb, filter)?;
        qb.push(" GROUP BY 1 ORDER BY 1");
        let rows = qb.build().fetch_all(self.pool()).await.map_err(map_err)?;
        rows.iter()
            .map(|r| {
                let n = |c: &str| -> BackendResult<u64> {
                    to_u64(c, r.try_get::<i64, _>(c).map_err(map_err)?)
                };
                Ok(SeriesPoint {
                    start: Timestamp(r.try_get("start").map_err(map_err)?),
                    opens: n("opens")?,
                    reads: n("reads")?,
                    writes: n("writes")?,
                    bytes_read: n("bytes_read")?,
                    bytes_written: n("bytes_written")?,
                    changes: n("changes")?,
                })
            })
            .collect()
    }

    async fn ensure_audit_partitions(&self, from: Timestamp, to: Timestamp) -> BackendResult<()> {
        let mut day = partition_start(from).0;
        while day <= to.0 {
            self.partitions.create(day).await?;
            day += AUDIT_PARTITION_NS;
        }
        Ok(())
    }

    async fn audit_partitions(&self) -> BackendResult<Vec<AuditPartition>> {
        let mut parts: Vec<AuditPartition> = self
            .partition_names()
            .await?
            .into_iter()
            .map(|(_, start)| AuditPartition {
                start,
                end: Timestamp(start.0 + AUDIT_PARTITION_NS),
            })
            .collect();
        parts.sort_by_key(|p| p.start);
        Ok(parts)
    }

    async fn expire_audit(
        &self,
        default_cutoff: Timestamp,
        cutoffs: &[(TenantId, Timestamp)],
    ) -> BackendResult<ExpiryReport> {
        let mut report = ExpiryReport::default();
        // Only days some tenant no longer keeps: recent and prepared partitions stay.
        let latest_cutoff = cutoffs
            .iter()
            .map(|c| c.1)
            .fold(default_cutoff, Timestamp::max);
        for (name, start) in self.partition_names().await? {
            let end = Timestamp(start.0.saturating_add(AUDIT_PARTITION_NS));
            if end > latest_cutoff {
                continue;
            }
            let expired = |cutoff: &Timestamp| *cutoff >= end;
            // The partition goes whole when no row in it belongs to a tenant still keeping that
            // day. The name comes from the catalog and matched audit_events_YYYYMMDD.
            let (sql, ids) = if expired(&default_cutoff) {
                let kept: Vec<i64> = cutoffs
                    .iter()
                    .filter(|c| !expired(&c.1))
                    .map(|c| c.0.0)
                    .collect();
                let sql =
                    format!("SELECT EXISTS (SELECT 1 FROM \"{name}\" WHERE tenant_id = ANY($1))");
                (sql, kept)
            } else {
                let gone: Vec<i64> = cutoffs
                    .iter()
                    .filter(|c| expired(&c.1))
                    .map(|c| c.0.0)
                    .collect();
                let sql =
                    format!("SELECT EXISTS (SELECT 1 FROM \"{name}\" WHERE tenant_id <> ALL($1))");
                (sql, gone)
            };
            let keep: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .bind(ids)
                .fetch_one(self.pool())
                .await
                .map_err(map_err)?;
            if !keep {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP TABLE IF EXISTS \"{name}\""
                )))
                .execute(self.pool())
                .await
                .map_err(map_err)?;
                report.partitions_dropped += 1;
            }
        }
        self.partitions.forget();
        // What is left past its tenant's retention lives in partitions other tenants keep.
        for &(tenant, cutoff) in cutoffs {
            let done = sqlx::query("DELETE FROM audit_events WHERE tenant_id = $1 AND at_ns < $2")
                .bind(tenant.0)
                .bind(cutoff.0)
                .execute(self.pool())
                .await
                .map_err(map_err)?;
            report.events_deleted += done.rows_affected();
        }
        let listed: Vec<i64> = cutoffs.iter().map(|c| c.0.0).collect();
        let done =
            sqlx::query("DELETE FROM audit_events WHERE at_ns < $1 AND tenant_id <> ALL($2)")
                .bind(default_cutoff.0)
                .bind(listed)
                .execute(self.pool())
                .await
                .map_err(map_err)?;
        report.events_deleted += done.rows_affected();
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_become_like_patterns() {
        assert_eq!(glob_to_like("/a/*.csv"), "/a/%.csv");
        assert_eq!(glob_to_like("/a_b/?%"), "/a\\_b/_\\%");
    }

    #[test]
    fn partition_names_parse() {
        assert_eq!(
            partition_of_name("audit_events_19700102"),
            Some(Timestamp(AUDIT_PARTITION_NS))
        );
        assert_eq!(partition_of_name("audit_events_x"), None);
    }
}
