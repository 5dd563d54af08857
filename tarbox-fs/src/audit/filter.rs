//! What an audit query selects, and the statistics computed over it.
//!
//! The PostgreSQL store translates a filter to SQL; the memory store and the tests use
//! [`AuditFilter::matches`] and [`aggregate`]/[`series`], which define the semantics.

use std::collections::HashMap;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{AuditEvent, AuditOp};
use crate::types::Timestamp;

/// Which events a query returns. Every condition set must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Tenant name.
    pub tenant: Option<String>,
    /// Events at or after this time.
    pub since: Option<Timestamp>,
    /// Events strictly before this time.
    pub until: Option<Timestamp>,
    /// Any of these operations (all when empty).
    pub ops: Vec<AuditOp>,
    /// On `path` or `path2`.
    pub path: Option<PathMatch>,
    pub uid: Option<u32>,
    pub pid: Option<u32>,
    /// Pod name, or `namespace/name`.
    pub pod: Option<String>,
    pub result: Option<ResultFilter>,
    /// Only events with a larger sequence number (for following a stream).
    pub after_seq: Option<u64>,
    /// At most this many events (0: no limit).
    pub limit: usize,
    pub order: AuditOrder,
}

/// Order of query results, by sequence number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AuditOrder {
    #[default]
    OldestFirst,
    NewestFirst,
}

/// A path condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// The path itself or anything under it.
    Prefix(String),
    /// A glob: `*` matches any run of characters (`/` included), `?` one character.
    Glob(String),
}

impl PathMatch {
    /// A glob if `s` has `*` or `?`, else a prefix.
    pub fn parse(s: &str) -> PathMatch {
        if s.contains(['*', '?']) {
            PathMatch::Glob(s.to_string())
        } else {
            PathMatch::Prefix(s.to_string())
        }
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Prefix(p) => {
                let p = p.trim_end_matches('/');
                p.is_empty()
                    || path == p
                    || (path.starts_with(p) && path.as_bytes().get(p.len()) == Some(&b'/'))
            }
            PathMatch::Glob(g) => glob_matches(g, path),
        }
    }
}

/// Whether `text` matches `glob` (`*`: any run of characters, `?`: one character).
pub fn glob_matches(glob: &str, text: &str) -> bool {
    let g: Vec<char> = glob.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Classic two-pointer match with backtracking to the last `*`.
    let (mut gi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if gi < g.len() && (g[gi] == '?' || g[gi] == t[ti]) {
            gi += 1;
            ti += 1;
        } else if gi < g.len() && g[gi] == '*' {
            star = Some((gi, ti));
            gi += 1;
        } else if let Some((sg, st)) = star {
            gi = sg + 1;
            ti = st + 1;
            star = Some((sg, st + 1));
        } else {
            return false;
        }
    }
    g[gi..].iter().all(|&c| c == '*')
}

/// A result condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultFilter {
    Ok,
    /// Any failure.
    Error,
    /// Denials: EACCES, EPERM, ENOSPC, EDQUOT, EROFS.
    Denied,
    Errno(i32),
}

impl FromStr for ResultFilter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ok" => Ok(ResultFilter::Ok),
            "error" => Ok(ResultFilter::Error),
            "denied" => Ok(ResultFilter::Denied),
            _ => super::event::errno_from_name(&s.to_ascii_uppercase())
                .map(ResultFilter::Errno)
                .ok_or_else(|| {
                    format!("unknown result {s:?}: expected ok, error, denied or an errno name like EACCES")
                }),
        }
    }
}

impl ResultFilter {
    pub fn matches(self, errno: i32) -> bool {
        match self {
            ResultFilter::Ok => errno == 0,
            ResultFilter::Error => errno != 0,
            ResultFilter::Denied => super::is_denial(errno),
            ResultFilter::Errno(e) => errno == e,
        }
    }
}

impl AuditFilter {
    /// Whether `e` satisfies every condition but the limit.
    pub fn matches(&self, e: &AuditEvent) -> bool {
        self.tenant.as_deref().is_none_or(|t| *e.tenant == *t)
            && self.since.is_none_or(|s| e.time >= s)
            && self.until.is_none_or(|u| e.time < u)
            && (self.ops.is_empty() || self.ops.contains(&e.op))
            && self.path.as_ref().is_none_or(|m| {
                e.path.as_deref().is_some_and(|p| m.matches(p))
                    || e.path2.as_deref().is_some_and(|p| m.matches(p))
            })
            && self.uid.is_none_or(|u| e.uid == u)
            && self.pid.is_none_or(|p| e.pid == p)
            && self.pod.as_deref().is_none_or(|want| {
                e.pod.as_ref().is_some_and(|pod| {
                    pod.name == want
                        || want.split_once('/') == Some((&pod.namespace[..], &pod.name[..]))
                })
            })
            && self.result.is_none_or(|r| r.matches(e.errno))
            && self.after_seq.is_none_or(|s| e.seq > s)
    }
}

/// What statistics group by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatsKey {
    File,
    /// The directory holding the file.
    Directory,
    Process,
    Pod,
    Uid,
}

impl FromStr for StatsKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "file" => Ok(StatsKey::File),
            "dir" | "directory" => Ok(StatsKey::Directory),
            "process" => Ok(StatsKey::Process),
            "pod" => Ok(StatsKey::Pod),
            "uid" => Ok(StatsKey::Uid),
            _ => Err(format!(
                "unknown grouping {s:?}: expected file, dir, process, pod or uid"
            )),
        }
    }
}

/// Read and write activity of one file, directory, process, pod or user over a window, summed
/// from the `close` records of its handles.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsRow {
    pub key: String,
    /// Handles closed.
    pub opens: u64,
    pub reads: u64,
    pub writes: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

/// Activity in one interval of a time series.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesPoint {
    /// Start of the interval.
    pub start: Timestamp,
    /// Handles closed in the interval, and what they did.
    pub opens: u64,
    pub reads: u64,
    pub writes: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Change events (creates, removes, renames, setattrs…).
    pub changes: u64,
}

/// The directory part of a path (`/a/b` → `/a`, `/a` → `/`).
pub fn parent_dir(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// The statistics key of a `close` event.
pub fn stats_key(e: &AuditEvent, key: StatsKey) -> String {
    match key {
        StatsKey::File => e.path.as_deref().unwrap_or("?").to_string(),
        StatsKey::Directory => parent_dir(e.path.as_deref().unwrap_or("/")).to_string(),
        StatsKey::Process => e
            .process
            .as_deref()
            .map_or_else(|| e.pid.to_string(), str::to_string),
        StatsKey::Pod => e.pod.as_ref().map_or_else(
            || "-".to_string(),
            |p| format!("{}/{}", p.namespace, p.name),
        ),
        StatsKey::Uid => e.uid.to_string(),
    }
}

/// Top `top` rows of `key` over the `close` events among `events`, busiest (reads + writes) first,
/// ties by bytes then key.
pub fn aggregate<'a>(
    events: impl Iterator<Item = &'a AuditEvent>,
    key: StatsKey,
    top: usize,
) -> Vec<StatsRow> {
    let mut rows: HashMap<String, StatsRow> = HashMap::new();
    for e in events.filter(|e| e.op == AuditOp::Close) {
        let k = stats_key(e, key);
        let row = rows.entry(k.clone()).or_insert_with(|| StatsRow {
            key: k,
            ..StatsRow::default()
        });
        let c = e.handle.unwrap_or_default();
        row.opens += 1;
        row.reads += c.reads;
        row.writes += c.writes;
        row.bytes_read += c.bytes_read;
        row.bytes_written += c.bytes_written;
    }
    let mut rows: Vec<StatsRow> = rows.into_values().collect();
    sort_rows(&mut rows);
    rows.truncate(top);
    rows
}

/// The order of statistics rows, shared by every store.
pub fn sort_rows(rows: &mut [StatsRow]) {
    rows.sort_by(|a, b| {
        (b.reads + b.writes)
            .cmp(&(a.reads + a.writes))
            .then((b.bytes_read + b.bytes_written).cmp(&(a.bytes_read + a.bytes_written)))
            .then(a.key.cmp(&b.key))
    });
}

/// Per-interval activity over `events`, intervals aligned to multiples of `interval_ns` since the
/// epoch, in time order; intervals without events are omitted.
pub fn series<'a>(
    events: impl Iterator<Item = &'a AuditEvent>,
    interval_ns: i64,
) -> Vec<SeriesPoint> {
    let interval_ns = interval_ns.max(1);
    let mut points: std::collections::BTreeMap<i64, SeriesPoint> = Default::default();
    for e in events {
        let start = e.time.0.div_euclid(interval_ns) * interval_ns;
        let p = points.entry(start).or_insert_with(|| SeriesPoint {
            start: Timestamp(start),
            ..SeriesPoint::default()
        });
        match e.op.class() {
            super::OpClass::Handle => {
                let c = e.handle.unwrap_or_default();
                p.opens += 1;
                p.reads += c.reads;
                p.writes += c.writes;
                p.bytes_read += c.bytes_read;
                p.bytes_written += c.bytes_written;
            }
            super::OpClass::Change if e.errno == 0 => p.changes += 1,
            _ => {}
        }
    }
    points.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_matches("/data/*.csv", "/data/a.csv"));
        assert!(glob_matches("/data/*.csv", "/data/x/y.csv"));
        assert!(!glob_matches("/data/*.csv", "/data/a.csvx"));
        assert!(glob_matches("/a?c", "/abc"));
        assert!(!glob_matches("/a?c", "/ac"));
        assert!(glob_matches("*", ""));
        assert!(glob_matches("/**/z", "/a/b/z"));
    }

    #[test]
    fn prefixes_match_whole_components() {
        let m = PathMatch::parse("/data");
        assert!(m.matches("/data"));
        assert!(m.matches("/data/x"));
        assert!(!m.matches("/database"));
        assert!(PathMatch::parse("/").matches("/anything"));
    }

    #[test]
    fn parent_dirs() {
        assert_eq!(parent_dir("/a/b"), "/a");
        assert_eq!(parent_dir("/a"), "/");
        assert_eq!(parent_dir("/"), "/");
    }
}
