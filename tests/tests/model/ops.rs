//! The operations of the model test, their generators, and the results both sides report.

use std::fmt;

use proptest::prelude::*;
use proptest::sample::Index;
use tarbox_fs::{Caller, FileAttr, FileType, FsError, Ino, RenameFlags, XattrMode};
use tarbox_tests::errno_name;

pub(crate) const BLOCK: u64 = 4096;
pub(crate) const USER_UID: u32 = 1000;
pub(crate) const USER_GID: u32 = 1000;
pub(crate) const SLOTS: usize = 2;

/// Who performs an operation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Who {
    Root,
    User,
}

impl fmt::Debug for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Who::Root => "root",
            Who::User => "user",
        })
    }
}

impl Who {
    pub(crate) fn caller(self) -> Caller {
        match self {
            Who::Root => Caller::root(),
            Who::User => Caller::new(USER_UID, USER_GID),
        }
    }

    pub(crate) fn ids(self) -> (u32, u32) {
        match self {
            Who::Root => (0, 0),
            Who::User => (USER_UID, USER_GID),
        }
    }
}

/// A path of one or two single-letter components, printed as `a/b`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct P(pub(crate) Vec<u8>);

impl fmt::Debug for P {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|c| (*c as char).to_string()).collect();
        write!(f, "\"{}\"", parts.join("/"))
    }
}

impl P {
    pub(crate) fn comps(&self) -> Vec<Vec<u8>> {
        self.0.iter().map(|c| vec![*c]).collect()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum RFlags {
    Plain,
    NoReplace,
    Exchange,
    /// Both flags: always `EINVAL`.
    Both,
}

impl RFlags {
    pub(crate) fn to_engine(self) -> RenameFlags {
        RenameFlags {
            no_replace: matches!(self, RFlags::NoReplace | RFlags::Both),
            exchange: matches!(self, RFlags::Exchange | RFlags::Both),
        }
    }
}

/// Compact octal mode in debug output.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mode(pub(crate) u32);

impl fmt::Debug for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0o{:o}", self.0)
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Op {
    Create {
        who: Who,
        path: P,
        mode: Mode,
        excl: bool,
        trunc: bool,
    },
    Mkdir {
        who: Who,
        path: P,
        mode: Mode,
    },
    Symlink {
        path: P,
        target: &'static str,
    },
    Readlink {
        path: P,
    },
    /// Open for writing, write `len` bytes of a pattern (all zeros for seed 0) at `off`, close.
    Write {
        who: Who,
        path: P,
        off: u64,
        len: usize,
        seed: u8,
    },
    /// Open for reading, read `len` bytes at `off`, close.
    Read {
        who: Who,
        path: P,
        off: u64,
        len: u32,
    },
    Truncate {
        who: Who,
        path: P,
        size: u64,
    },
    Unlink {
        who: Who,
        path: P,
    },
    Rmdir {
        who: Who,
        path: P,
    },
    Rename {
        from: P,
        to: P,
        flags: RFlags,
    },
    Link {
        from: P,
        to: P,
    },
    SetXattr {
        who: Who,
        path: P,
        name: &'static str,
        value: Vec<u8>,
        mode: XattrMode,
    },
    GetXattr {
        who: Who,
        path: P,
        name: &'static str,
    },
    RemoveXattr {
        who: Who,
        path: P,
        name: &'static str,
    },
    ListXattr {
        path: P,
    },
    Chmod {
        who: Who,
        path: P,
        mode: Mode,
    },
    Stat {
        who: Who,
        path: P,
    },
    /// Open `path` read-write as root into a handle slot (closing what the slot held).
    HOpen {
        slot: usize,
        path: P,
    },
    HWrite {
        slot: usize,
        off: u64,
        len: usize,
        seed: u8,
    },
    HRead {
        slot: usize,
        off: u64,
        len: u32,
    },
    /// `ftruncate` through the slot's handle.
    HTruncate {
        slot: usize,
        size: u64,
    },
    /// `getattr` of the slot's inode (which may have no names left).
    HStat {
        slot: usize,
    },
    HClose {
        slot: usize,
    },
    /// Checkpoint the tree under a fresh name (`cp0`, `cp1`…), or with `reuse` under the name of
    /// an earlier checkpoint: `EEXIST` while it exists, accepted again once it was dropped.
    Checkpoint {
        reuse: Option<Index>,
    },
    /// Switch to one of the layers made so far: a checkpoint, or a head an earlier switch left
    /// (roll forward). A dropped one gives `ENOENT`.
    Switch {
        pick: Index,
    },
    /// Drop one of the layers made so far, or the current one (`EBUSY`).
    Drop {
        pick: Index,
        force: bool,
    },
}

pub(crate) fn who() -> impl Strategy<Value = Who> {
    prop_oneof![4 => Just(Who::Root), 1 => Just(Who::User)]
}

pub(crate) fn path() -> impl Strategy<Value = P> {
    let name = prop::sample::select(vec![b'a', b'b', b'c', b'd']);
    prop_oneof![
        3 => name.clone().prop_map(|a| P(vec![a])),
        2 => (name.clone(), name).prop_map(|(a, b)| P(vec![a, b])),
    ]
}

/// A name, usually one of `preferred`.
pub(crate) fn name_from(preferred: [u8; 2]) -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => prop::sample::select(preferred.to_vec()),
        1 => prop::sample::select(vec![b'a', b'b', b'c', b'd']),
    ]
}

/// A path that usually names a file: `c`, `d` at the top or under the usual directories `a`, `b`.
pub(crate) fn fpath() -> impl Strategy<Value = P> {
    prop_oneof![
        2 => name_from(*b"cd").prop_map(|a| P(vec![a])),
        3 => (name_from(*b"ab"), name_from(*b"cd")).prop_map(|(a, b)| P(vec![a, b])),
    ]
}

/// A path that usually names a directory.
pub(crate) fn dpath() -> impl Strategy<Value = P> {
    prop_oneof![
        3 => name_from(*b"ab").prop_map(|a| P(vec![a])),
        2 => (name_from(*b"ab"), name_from(*b"ab")).prop_map(|(a, b)| P(vec![a, b])),
    ]
}

/// A path for xattr operations: usually one of the prelude's nodes, so that get and remove find
/// what set stored.
pub(crate) fn xpath() -> impl Strategy<Value = P> {
    prop_oneof![
        3 => prop::sample::select(vec![P(vec![b'a']), P(vec![b'c']), P(vec![b'a', b'd'])]),
        1 => path(),
    ]
}

pub(crate) fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..16,
        BLOCK - 8..BLOCK + 8,
        2 * BLOCK - 8..2 * BLOCK + 8,
        0u64..6 * BLOCK,
    ]
}

pub(crate) fn length() -> impl Strategy<Value = usize> {
    prop_oneof![
        0usize..10,
        BLOCK as usize - 4..BLOCK as usize + 4,
        1usize..3 * BLOCK as usize,
    ]
}

pub(crate) fn seed() -> impl Strategy<Value = u8> {
    prop_oneof![1 => Just(0u8), 4 => 1u8..=255]
}

pub(crate) fn file_mode() -> impl Strategy<Value = Mode> {
    prop::sample::select(vec![0o644, 0o600, 0o666]).prop_map(Mode)
}

pub(crate) fn dir_mode() -> impl Strategy<Value = Mode> {
    prop::sample::select(vec![0o755, 0o777, 0o700, 0o1777]).prop_map(Mode)
}

pub(crate) fn chmod_mode() -> impl Strategy<Value = Mode> {
    prop::sample::select(vec![0o755, 0o777, 0o700, 0o1777, 0o644, 0o600, 0o000]).prop_map(Mode)
}

pub(crate) fn xname() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["user.x", "user.y"])
}

pub(crate) fn slot() -> impl Strategy<Value = usize> {
    0..SLOTS
}

pub(crate) fn op() -> impl Strategy<Value = Op> {
    let rflags = prop_oneof![
        4 => Just(RFlags::Plain),
        2 => Just(RFlags::NoReplace),
        2 => Just(RFlags::Exchange),
        1 => Just(RFlags::Both),
    ];
    let xmode = prop_oneof![
        Just(XattrMode::Any),
        Just(XattrMode::Create),
        Just(XattrMode::Replace)
    ];
    let target = prop::sample::select(vec!["t", "a/b", "../x", "/abs/path/that/is/longer"]);
    prop_oneof![
        8 => (who(), fpath(), file_mode(), any::<bool>(), prop::bool::weighted(0.2))
            .prop_map(|(who, path, mode, excl, trunc)| Op::Create { who, path, mode, excl, trunc }),
        3 => (who(), dpath(), dir_mode()).prop_map(|(who, path, mode)| Op::Mkdir { who, path, mode }),
        2 => (fpath(), target).prop_map(|(path, target)| Op::Symlink { path, target }),
        1 => fpath().prop_map(|path| Op::Readlink { path }),
        8 => (who(), fpath(), offset(), length(), seed())
            .prop_map(|(who, path, off, len, seed)| Op::Write { who, path, off, len, seed }),
        4 => (who(), fpath(), offset(), length())
            .prop_map(|(who, path, off, len)| Op::Read { who, path, off, len: len as u32 }),
        3 => (who(), fpath(), offset()).prop_map(|(who, path, size)| Op::Truncate { who, path, size }),
        4 => (who(), path()).prop_map(|(who, path)| Op::Unlink { who, path }),
        3 => (who(), dpath()).prop_map(|(who, path)| Op::Rmdir { who, path }),
        8 => (path(), path(), rflags).prop_map(|(from, to, flags)| Op::Rename { from, to, flags }),
        3 => (fpath(), path()).prop_map(|(from, to)| Op::Link { from, to }),
        2 => (who(), xpath(), xname(), prop::collection::vec(any::<u8>(), 0..4), xmode)
            .prop_map(|(who, path, name, value, mode)| Op::SetXattr { who, path, name, value, mode }),
        2 => (who(), xpath(), xname()).prop_map(|(who, path, name)| Op::GetXattr { who, path, name }),
        1 => (who(), xpath(), xname()).prop_map(|(who, path, name)| Op::RemoveXattr { who, path, name }),
        1 => xpath().prop_map(|path| Op::ListXattr { path }),
        3 => (who(), path(), chmod_mode()).prop_map(|(who, path, mode)| Op::Chmod { who, path, mode }),
        3 => (who(), path()).prop_map(|(who, path)| Op::Stat { who, path }),
        3 => (slot(), fpath()).prop_map(|(slot, path)| Op::HOpen { slot, path }),
        4 => (slot(), offset(), length(), seed())
            .prop_map(|(slot, off, len, seed)| Op::HWrite { slot, off, len, seed }),
        2 => (slot(), offset(), length()).prop_map(|(slot, off, len)| Op::HRead { slot, off, len: len as u32 }),
        1 => (slot(), offset()).prop_map(|(slot, size)| Op::HTruncate { slot, size }),
        1 => slot().prop_map(|slot| Op::HStat { slot }),
        1 => slot().prop_map(|slot| Op::HClose { slot }),
        4 => prop::option::weighted(0.2, any::<Index>()).prop_map(|reuse| Op::Checkpoint { reuse }),
        3 => any::<Index>().prop_map(|pick| Op::Switch { pick }),
        2 => (any::<Index>(), prop::bool::weighted(0.8)).prop_map(|(pick, force)| Op::Drop { pick, force }),
    ]
}

/// Every sequence starts with these operations, so that random paths often name something:
/// directories `a` (writable by everyone) and `b`, files `c` and `a/d` with data.
pub(crate) fn prelude() -> Vec<Op> {
    let p = |s: &str| P(s.bytes().filter(|c| *c != b'/').collect());
    vec![
        Op::Mkdir {
            who: Who::Root,
            path: p("a"),
            mode: Mode(0o777),
        },
        Op::Mkdir {
            who: Who::Root,
            path: p("b"),
            mode: Mode(0o755),
        },
        Op::Create {
            who: Who::Root,
            path: p("c"),
            mode: Mode(0o644),
            excl: true,
            trunc: false,
        },
        Op::Write {
            who: Who::Root,
            path: p("c"),
            off: 100,
            len: 5000,
            seed: 7,
        },
        Op::Create {
            who: Who::User,
            path: p("a/d"),
            mode: Mode(0o644),
            excl: true,
            trunc: false,
        },
        Op::Write {
            who: Who::User,
            path: p("a/d"),
            off: 0,
            len: 300,
            seed: 9,
        },
    ]
}

pub(crate) fn sequence() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 1..60).prop_map(|ops| {
        let mut all = prelude();
        all.extend(ops);
        all
    })
}

/// The bytes a write of `len` at `off` with `seed` carries: zeros for seed 0, else a pattern that
/// depends on the absolute offset so that misplaced bytes are caught.
pub(crate) fn pattern(seed: u8, off: u64, len: usize) -> Vec<u8> {
    if seed == 0 {
        return vec![0; len];
    }
    (0..len as u64)
        .map(|i| {
            let x = (off + i).wrapping_mul(2 * u64::from(seed) + 1) ^ u64::from(seed);
            ((x >> 3) as u8) | 1
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------------

/// What `stat` shows that the model knows. Directory sizes are not modelled.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct St {
    pub(crate) ino: Ino,
    pub(crate) kind: FileType,
    pub(crate) size: Option<u64>,
    pub(crate) nlink: u32,
    pub(crate) perm: Mode,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

impl St {
    pub(crate) fn of(attr: &FileAttr) -> St {
        St {
            ino: attr.ino,
            kind: attr.kind,
            size: (attr.kind != FileType::Directory).then_some(attr.size),
            nlink: attr.nlink,
            perm: Mode(u32::from(attr.perm)),
            uid: attr.uid,
            gid: attr.gid,
        }
    }
}

/// Bytes, printed as their length and a short prefix.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Data(pub(crate) Vec<u8>);

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head: Vec<u8> = self.0.iter().take(16).copied().collect();
        write!(
            f,
            "{} bytes {:02x?}{}",
            self.0.len(),
            head,
            if self.0.len() > 16 { "…" } else { "" }
        )
    }
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) enum Out {
    Unit,
    Len(u32),
    Data(Data),
    Stat(St),
    Names(Vec<String>),
}

/// An errno, printed symbolically.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Errno(pub(crate) i32);

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&errno_name(self.0))
    }
}

pub(crate) type MRes = Result<Out, Errno>;

pub(crate) fn err<T>(errno: i32) -> Result<T, Errno> {
    Err(Errno(errno))
}

/// An engine error, keeping its message for the failure report.
pub(crate) struct EErr {
    pub(crate) errno: Errno,
    pub(crate) what: String,
}

impl fmt::Debug for EErr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} ({})", self.errno, self.what)
    }
}

impl From<FsError> for EErr {
    fn from(e: FsError) -> EErr {
        EErr {
            errno: Errno(e.errno()),
            what: e.to_string(),
        }
    }
}

pub(crate) type ERes<T> = Result<T, EErr>;

/// Where two byte strings first differ, for readable failures.
pub(crate) fn first_diff(a: &[u8], b: &[u8]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!(
            "first difference at byte {i}: engine {:#04x}, model {:#04x}",
            a[i], b[i]
        ),
        None if a.len() != b.len() => {
            format!("lengths differ: engine {}, model {}", a.len(), b.len())
        }
        None => "equal".to_string(),
    }
}
