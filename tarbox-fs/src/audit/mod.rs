//! Audit: one typed event per operation, delivered to pluggable sinks off the data path.
//!
//! The engine builds an [`AuditEvent`] for every operation the tenant's [`AuditLevel`] asks for
//! (and for every denial at any level above `off`) and hands it to the engine's [`Auditor`]: a
//! bounded queue drained by one background task that writes batches to each [`AuditSink`]. A file
//! operation never waits on a sink: when the queue is full the event is dropped and counted
//! ([`Overflow::Drop`], the default) or the operation waits for room ([`Overflow::Block`]).
//!
//! In *strict* mode ([`AuditConfig::strict`]) change events are also written by the store in the
//! same transaction as the change, so a committed change always has its record; the database sink
//! then skips them.
//!
//! Delivery guarantees: a clean shutdown ([`crate::Engine::close`]) writes everything queued; after
//! a crash, at most the events of the last [`AuditConfig::flush_interval`] (plus whatever was
//! queued behind a slow sink) are missing, except strict change events, which are never missing.

mod event;
mod filter;
mod held;
mod pipeline;
mod sink;
mod store;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use event::{AuditEvent, HandleCounters, errno_from_name, errno_name, path_display};
pub use filter::{
    AuditFilter, AuditOrder, PathMatch, ResultFilter, SeriesPoint, StatsKey, StatsRow, aggregate,
    glob_matches, parent_dir, series, sort_rows, stats_key,
};
pub use pipeline::{AuditCounters, Auditor};
pub use sink::{AuditSink, JsonLinesSink, SinkError, StoreSink, TracingSink};
pub use store::{AUDIT_PARTITION_NS, AuditPartition, AuditStore, ExpiryReport, partition_start};

/// How much of a tenant's activity is recorded.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum AuditLevel {
    /// Nothing (metrics are still counted).
    Off,
    /// Every change (create, remove, rename, link, setattr, truncate, xattr changes, layer
    /// operations) and every denial.
    Basic,
    /// Basic plus one record per open handle at close, with read and write counts and bytes.
    #[default]
    Standard,
    /// Standard plus every read, write, lookup, getattr, open, readdir and other access.
    Full,
}

impl AuditLevel {
    pub const ALL: [AuditLevel; 4] = [
        AuditLevel::Off,
        AuditLevel::Basic,
        AuditLevel::Standard,
        AuditLevel::Full,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditLevel::Off => "off",
            AuditLevel::Basic => "basic",
            AuditLevel::Standard => "standard",
            AuditLevel::Full => "full",
        }
    }

    /// Stable storage code.
    pub fn code(self) -> i16 {
        self as i16
    }

    pub fn from_code(code: i16) -> Option<AuditLevel> {
        AuditLevel::ALL.get(usize::try_from(code).ok()?).copied()
    }

    /// Whether an operation of `class` is recorded when it succeeds (denials are recorded at
    /// every level but `Off`).
    pub fn records(self, class: OpClass) -> bool {
        match class {
            OpClass::Change => self >= AuditLevel::Basic,
            OpClass::Handle => self >= AuditLevel::Standard,
            OpClass::Access => self >= AuditLevel::Full,
        }
    }
}

impl fmt::Display for AuditLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AuditLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AuditLevel::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| {
                format!("unknown audit level {s:?}: expected off, basic, standard or full")
            })
    }
}

/// Which level first records an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpClass {
    /// Changes the tree or the tenant's history: `basic`.
    Change,
    /// The close of a handle, with its counters: `standard`.
    Handle,
    /// Reads and lookups: `full`.
    Access,
}

macro_rules! audit_ops {
    ($($variant:ident => $name:literal, $class:ident;)*) => {
        /// An audited operation. The names are part of the stable event schema.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum AuditOp { $($variant,)* }

        impl AuditOp {
            pub const ALL: &[AuditOp] = &[$(AuditOp::$variant,)*];

            /// The operation's name in events, queries and metrics.
            pub fn as_str(self) -> &'static str {
                match self { $(AuditOp::$variant => $name,)* }
            }

            pub fn class(self) -> OpClass {
                match self { $(AuditOp::$variant => OpClass::$class,)* }
            }
        }
    };
}

audit_ops! {
    Create => "create", Change;
    Mknod => "mknod", Change;
    Mkdir => "mkdir", Change;
    Symlink => "symlink", Change;
    Link => "link", Change;
    Unlink => "unlink", Change;
    Rmdir => "rmdir", Change;
    Rename => "rename", Change;
    Setattr => "setattr", Change;
    Truncate => "truncate", Change;
    Fallocate => "fallocate", Change;
    Setxattr => "setxattr", Change;
    Removexattr => "removexattr", Change;
    Checkpoint => "checkpoint", Change;
    SwitchLayer => "switch_layer", Change;
    DropLayer => "drop_layer", Change;
    SetPolicy => "set_policy", Change;
    Close => "close", Handle;
    Lookup => "lookup", Access;
    Getattr => "getattr", Access;
    Access => "access", Access;
    Open => "open", Access;
    Read => "read", Access;
    Write => "write", Access;
    Fsync => "fsync", Access;
    Readdir => "readdir", Access;
    Readlink => "readlink", Access;
    Getxattr => "getxattr", Access;
    Listxattr => "listxattr", Access;
}

impl fmt::Display for AuditOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AuditOp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AuditOp::ALL
            .iter()
            .copied()
            .find(|op| op.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = AuditOp::ALL.iter().map(|op| op.as_str()).collect();
                format!(
                    "unknown operation {s:?}: expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// Whether an errno is a denial, recorded at every level above `off`.
pub fn is_denial(errno: i32) -> bool {
    matches!(
        errno,
        libc::EACCES | libc::EPERM | libc::ENOSPC | libc::EDQUOT | libc::EROFS
    )
}

/// What happens to an event when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// Drop it and count the drop: file operations never wait on the audit trail.
    #[default]
    Drop,
    /// Make the operation wait for room: nothing is dropped, a slow sink slows the filesystem.
    Block,
}

impl FromStr for Overflow {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "drop" => Ok(Overflow::Drop),
            "block" => Ok(Overflow::Block),
            _ => Err(format!(
                "unknown overflow policy {s:?}: expected drop or block"
            )),
        }
    }
}

/// Audit tuning of an engine.
#[derive(Clone)]
pub struct AuditConfig {
    /// Level of tenants that have none set.
    pub default_level: AuditLevel,
    /// Retention of tenants that have none set, in days.
    pub default_retention_days: u32,
    /// Write events to the store's audit table (queryable with [`crate::Engine::audit_query`]).
    pub store: bool,
    /// Further sinks (JSON lines, tracing, your own).
    pub sinks: Vec<Arc<dyn AuditSink>>,
    /// Events the queue holds before [`AuditConfig::overflow`] applies.
    pub queue_capacity: usize,
    /// Most events written in one batch.
    pub batch_size: usize,
    /// How long the writer waits to fill a batch; bounds what a crash loses.
    pub flush_interval: Duration,
    pub overflow: Overflow,
    /// Events held in memory per sink while it is unavailable (see `held`); beyond this they
    /// are spilled to `spill_dir`, or dropped (counted) without one.
    pub held_capacity: usize,
    /// Where events held beyond `held_capacity` (and at shutdown) are kept until their sink is
    /// back; an engine started on the same directory delivers them.
    pub spill_dir: Option<std::path::PathBuf>,
    /// Write change events in the same store transaction as the change.
    pub strict: bool,
    /// This machine's name in events (default: the host name).
    pub node: String,
}

impl fmt::Debug for AuditConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditConfig")
            .field("default_level", &self.default_level)
            .field("default_retention_days", &self.default_retention_days)
            .field("store", &self.store)
            .field(
                "sinks",
                &self.sinks.iter().map(|s| s.name()).collect::<Vec<_>>(),
            )
            .field("queue_capacity", &self.queue_capacity)
            .field("batch_size", &self.batch_size)
            .field("flush_interval", &self.flush_interval)
            .field("overflow", &self.overflow)
            .field("held_capacity", &self.held_capacity)
            .field("spill_dir", &self.spill_dir)
            .field("strict", &self.strict)
            .field("node", &self.node)
            .finish()
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            default_level: AuditLevel::Standard,
            default_retention_days: 30,
            store: true,
            sinks: Vec::new(),
            queue_capacity: 65_536,
            batch_size: 1024,
            flush_interval: Duration::from_millis(200),
            overflow: Overflow::Drop,
            held_capacity: 100_000,
            spill_dir: None,
            strict: false,
            node: host_name(),
        }
    }
}

/// The machine's host name, or `"localhost"`.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}
