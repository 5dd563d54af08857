//! The audit event and its stable JSON form.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::AuditOp;
use crate::types::{Ino, LayerId, PodIdentity, TenantId, Timestamp};

/// One recorded operation. Its JSON form (one object per line in [`super::JsonLinesSink`]) is a
/// stable schema documented in `docs/audit.md`: fields are only ever added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Store sequence number, assigned when the event is written to the store (0 before).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seq: u64,
    /// When the operation started.
    #[serde(with = "rfc3339_nanos")]
    pub time: Timestamp,
    pub tenant: Arc<str>,
    pub tenant_id: TenantId,
    /// The layer the operation went through (the head layer, or the checkpoint of a time-travel
    /// view).
    pub layer: LayerId,
    pub op: AuditOp,
    /// The path operated on, from the tenant's root. Bytes that are not UTF-8 appear as `\xNN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<Arc<str>>,
    /// The second path: the new name of a rename or link, or the target of a symlink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path2: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ino: Option<Ino>,
    /// Start of the byte range of a read, write, truncate or fallocate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Bytes read or written, the new size of a truncate, the length of a fallocate.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bytes: u64,
    /// How long the operation took, in microseconds.
    pub duration_us: u64,
    /// 0 on success, else the errno returned.
    pub errno: i32,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// The calling process's name (`comm`), when it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<Arc<str>>,
    /// Host the engine runs on.
    pub node: Arc<str>,
    /// Which mount (or CLI invocation, or CSI volume) of the tenant.
    pub mount: Arc<str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Arc<PodIdentity>>,
    /// Counters of a closed handle (`close` events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<HandleCounters>,
    /// Operation details: changed attributes, xattr name, layer name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Arc<str>>,
    /// Already written by the store in the operation's own transaction (strict mode).
    #[serde(skip)]
    pub(crate) in_store: bool,
}

/// What one open handle did before it was closed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandleCounters {
    pub reads: u64,
    pub writes: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

impl AuditEvent {
    /// `"ok"` or the errno's symbolic name.
    pub fn result(&self) -> &'static str {
        if self.errno == 0 {
            "ok"
        } else {
            errno_name(self.errno)
        }
    }
}

/// One line: time, operation, result, path(s), bytes, caller, duration.
#[cfg(test)]
impl AuditEvent {
    /// A successful `mkdir` of `/d<seq>` with every other field plain, for tests.
    pub(crate) fn sample(seq: u64) -> AuditEvent {
        AuditEvent {
            seq,
            time: Timestamp(0),
            tenant: "t".into(),
            tenant_id: TenantId(1),
            layer: LayerId(2),
            op: AuditOp::Mkdir,
            path: Some(format!("/d{seq}").into()),
            path2: None,
            ino: None,
            offset: None,
            bytes: 0,
            duration_us: 0,
            errno: 0,
            uid: 0,
            gid: 0,
            pid: 0,
            process: None,
            node: "n".into(),
            mount: "m".into(),
            pod: None,
            handle: None,
            detail: None,
            in_store: false,
        }
    }
}

impl std::fmt::Display for AuditEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let time = jiff::Timestamp::from_nanosecond(i128::from(self.time.0))
            .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
            .unwrap_or_else(|_| format!("@{}", self.time.0));
        write!(f, "{time} {:<11} {:<7}", self.op.as_str(), self.result())?;
        match (&self.path, &self.path2) {
            (Some(p), Some(p2)) => write!(f, " {p} -> {p2}")?,
            (Some(p), None) => write!(f, " {p}")?,
            (None, _) => {}
        }
        if let Some(d) = &self.detail {
            write!(f, " [{d}]")?;
        }
        if let Some(h) = &self.handle {
            write!(
                f,
                " reads={} writes={} read={}B written={}B",
                h.reads, h.writes, h.bytes_read, h.bytes_written
            )?;
        } else if self.bytes > 0 {
            write!(f, " {}B", self.bytes)?;
        }
        if let Some(off) = self.offset {
            write!(f, " @{off}")?;
        }
        write!(f, " uid={} pid={}", self.uid, self.pid)?;
        if let Some(p) = &self.process {
            write!(f, " ({p})")?;
        }
        if let Some(pod) = &self.pod {
            write!(f, " pod={}/{}", pod.namespace, pod.name)?;
        }
        write!(f, " {}us", self.duration_us)
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The symbolic name of the errnos a filesystem returns.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        0 => "ok",
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::E2BIG => "E2BIG",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EDQUOT => "EDQUOT",
        _ => "EOTHER",
    }
}

/// The errno of a symbolic name (`"EACCES"`), for filters.
pub fn errno_from_name(name: &str) -> Option<i32> {
    (1..200).find(|&e| errno_name(e) == name)
}

/// A path as events show it: UTF-8 kept, other bytes as `\xNN` (and a literal backslash as `\\`),
/// so distinct names stay distinct.
pub fn path_display(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Timestamps in events: RFC 3339 in UTC with nanoseconds.
mod rfc3339_nanos {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    use crate::types::Timestamp;

    pub fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        match jiff::Timestamp::from_nanosecond(i128::from(t.0)) {
            Ok(ts) => s.collect_str(&ts.strftime("%Y-%m-%dT%H:%M:%S%.9fZ")),
            Err(_) => s.serialize_i64(t.0),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let s = String::deserialize(d)?;
        let ts: jiff::Timestamp = s.parse().map_err(D::Error::custom)?;
        let ns = i64::try_from(ts.as_nanosecond()).map_err(D::Error::custom)?;
        Ok(Timestamp(ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_utf8_paths_stay_distinct() {
        assert_eq!(path_display(b"/a/b"), "/a/b");
        assert_eq!(path_display(b"/caf\xc3\xa9"), "/café");
        assert_eq!(path_display(b"/x\xff"), "/x\\xff");
        assert_eq!(path_display(b"/x\\xff"), "/x\\\\xff");
    }

    #[test]
    fn times_keep_nanoseconds_in_json() {
        let e = AuditEvent {
            time: Timestamp(1_764_500_000_123_456_789),
            path: Some("/d".into()),
            ino: Some(Ino(5)),
            duration_us: 3,
            uid: 1,
            gid: 2,
            pid: 3,
            ..AuditEvent::sample(0)
        };
        let json = serde_json::to_string(&e).expect("serialize");
        assert!(
            json.contains("\"time\":\"2025-11-30T10:53:20.123456789Z\""),
            "{json}"
        );
        let back: AuditEvent = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, e);
    }

    #[test]
    fn errno_names_round_trip() {
        for e in [libc::EACCES, libc::ENOSPC, libc::ENOENT, libc::EDQUOT] {
            assert_eq!(errno_from_name(errno_name(e)), Some(e));
        }
        assert_eq!(errno_from_name("ENOPE"), None);
    }
}
