//! Model-based test of the namespace and file data: random operation sequences are applied both to
//! a [`Volume`] and to a small in-memory model of a POSIX tree, and every result (values and
//! errnos) must agree. After each sequence the whole tree is walked through `readdir` and compared
//! with the model (names, kinds, inode numbers, link counts, sizes, contents, xattrs, usage).
//!
//! The name space is tiny (`a`..`d`, at most two levels) so that operations collide often. The
//! tenant uses 4 KiB blocks so writes cross blocks and leave sparse gaps cheaply. Most operations
//! run as root; some run as an unprivileged caller (uid 1000) to exercise permission and sticky
//! rules, whose expected errnos follow Linux (checked against a real kernel). Two handle slots
//! keep files open across operations, so buffered writes, `ftruncate` and unlinked-but-open
//! files are covered too. Every sequence starts with a fixed prelude (directories `a`, `b`, files
//! `c`, `a/d`) and runs on an engine with the default write buffer or one that flushes every two
//! blocks (`small_buffer`).
//!
//! The same code runs on the memory backend (`memory::model_sequences`, 64 cases by default) and on
//! PostgreSQL (`postgres::model_sequences`, 16 cases); `PROPTEST_CASES` overrides both. A failure
//! shrinks to a short, readable operation list.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError};
use tarbox_fs::backend::memory::MemoryBackend;
use tarbox_fs::{
    Backend, Caller, Engine, EngineConfig, FileAttr, FileHandle, FileType, FsError, Ino,
    RenameFlags, SetAttr, TenantOptions, Volume, XattrMode,
};
use tarbox_tests::{errno_name, unique_tenant_name};

const BLOCK: u64 = 4096;
const USER_UID: u32 = 1000;
const USER_GID: u32 = 1000;
const SLOTS: usize = 2;

// ---------------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------------

/// Who performs an operation.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Who {
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
    fn caller(self) -> Caller {
        match self {
            Who::Root => Caller::root(),
            Who::User => Caller::new(USER_UID, USER_GID),
        }
    }

    fn ids(self) -> (u32, u32) {
        match self {
            Who::Root => (0, 0),
            Who::User => (USER_UID, USER_GID),
        }
    }
}

/// A path of one or two single-letter components, printed as `a/b`.
#[derive(Clone, PartialEq, Eq)]
struct P(Vec<u8>);

impl fmt::Debug for P {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|c| (*c as char).to_string()).collect();
        write!(f, "\"{}\"", parts.join("/"))
    }
}

impl P {
    fn comps(&self) -> Vec<Vec<u8>> {
        self.0.iter().map(|c| vec![*c]).collect()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum RFlags {
    Plain,
    NoReplace,
    Exchange,
    /// Both flags: always `EINVAL`.
    Both,
}

impl RFlags {
    fn to_engine(self) -> RenameFlags {
        RenameFlags {
            no_replace: matches!(self, RFlags::NoReplace | RFlags::Both),
            exchange: matches!(self, RFlags::Exchange | RFlags::Both),
        }
    }
}

/// Compact octal mode in debug output.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Mode(u32);

impl fmt::Debug for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0o{:o}", self.0)
    }
}

#[derive(Clone, Debug)]
enum Op {
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
}

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![4 => Just(Who::Root), 1 => Just(Who::User)]
}

fn path() -> impl Strategy<Value = P> {
    let name = prop::sample::select(vec![b'a', b'b', b'c', b'd']);
    prop_oneof![
        3 => name.clone().prop_map(|a| P(vec![a])),
        2 => (name.clone(), name).prop_map(|(a, b)| P(vec![a, b])),
    ]
}

/// A name, usually one of `preferred`.
fn name_from(preferred: [u8; 2]) -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => prop::sample::select(preferred.to_vec()),
        1 => prop::sample::select(vec![b'a', b'b', b'c', b'd']),
    ]
}

/// A path that usually names a file: `c`, `d` at the top or under the usual directories `a`, `b`.
fn fpath() -> impl Strategy<Value = P> {
    prop_oneof![
        2 => name_from(*b"cd").prop_map(|a| P(vec![a])),
        3 => (name_from(*b"ab"), name_from(*b"cd")).prop_map(|(a, b)| P(vec![a, b])),
    ]
}

/// A path that usually names a directory.
fn dpath() -> impl Strategy<Value = P> {
    prop_oneof![
        3 => name_from(*b"ab").prop_map(|a| P(vec![a])),
        2 => (name_from(*b"ab"), name_from(*b"ab")).prop_map(|(a, b)| P(vec![a, b])),
    ]
}

/// A path for xattr operations: usually one of the prelude's nodes, so that get and remove find
/// what set stored.
fn xpath() -> impl Strategy<Value = P> {
    prop_oneof![
        3 => prop::sample::select(vec![P(vec![b'a']), P(vec![b'c']), P(vec![b'a', b'd'])]),
        1 => path(),
    ]
}

fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..16,
        BLOCK - 8..BLOCK + 8,
        2 * BLOCK - 8..2 * BLOCK + 8,
        0u64..6 * BLOCK,
    ]
}

fn length() -> impl Strategy<Value = usize> {
    prop_oneof![
        0usize..10,
        BLOCK as usize - 4..BLOCK as usize + 4,
        1usize..3 * BLOCK as usize,
    ]
}

fn seed() -> impl Strategy<Value = u8> {
    prop_oneof![1 => Just(0u8), 4 => 1u8..=255]
}

fn file_mode() -> impl Strategy<Value = Mode> {
    prop::sample::select(vec![0o644, 0o600, 0o666]).prop_map(Mode)
}

fn dir_mode() -> impl Strategy<Value = Mode> {
    prop::sample::select(vec![0o755, 0o777, 0o700, 0o1777]).prop_map(Mode)
}

fn chmod_mode() -> impl Strategy<Value = Mode> {
    prop::sample::select(vec![0o755, 0o777, 0o700, 0o1777, 0o644, 0o600, 0o000]).prop_map(Mode)
}

fn xname() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["user.x", "user.y"])
}

fn slot() -> impl Strategy<Value = usize> {
    0..SLOTS
}

fn op() -> impl Strategy<Value = Op> {
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
    ]
}

/// Every sequence starts with these operations, so that random paths often name something:
/// directories `a` (writable by everyone) and `b`, files `c` and `a/d` with data.
fn prelude() -> Vec<Op> {
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

fn sequence() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 1..60).prop_map(|ops| {
        let mut all = prelude();
        all.extend(ops);
        all
    })
}

/// The bytes a write of `len` at `off` with `seed` carries: zeros for seed 0, else a pattern that
/// depends on the absolute offset so that misplaced bytes are caught.
fn pattern(seed: u8, off: u64, len: usize) -> Vec<u8> {
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
struct St {
    ino: Ino,
    kind: FileType,
    size: Option<u64>,
    nlink: u32,
    perm: Mode,
    uid: u32,
    gid: u32,
}

impl St {
    fn of(attr: &FileAttr) -> St {
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
struct Data(Vec<u8>);

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
enum Out {
    Unit,
    Len(u32),
    Data(Data),
    Stat(St),
    Names(Vec<String>),
}

/// An errno, printed symbolically.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Errno(i32);

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&errno_name(self.0))
    }
}

type MRes = Result<Out, Errno>;

fn err<T>(errno: i32) -> Result<T, Errno> {
    Err(Errno(errno))
}

/// An engine error, keeping its message for the failure report.
struct EErr {
    errno: Errno,
    what: String,
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

type ERes<T> = Result<T, EErr>;

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

type Id = usize;
const ROOT: Id = 0;

#[derive(Clone, Debug)]
enum Kind {
    File(Vec<u8>),
    Dir(BTreeMap<Vec<u8>, Id>),
    Sym(Vec<u8>),
}

#[derive(Clone, Debug)]
struct Node {
    kind: Kind,
    nlink: u32,
    perm: u16,
    uid: u32,
    gid: u32,
    xattrs: BTreeMap<String, Vec<u8>>,
    /// For directories, the containing directory.
    parent: Id,
}

impl Node {
    fn ftype(&self) -> FileType {
        match self.kind {
            Kind::File(_) => FileType::Regular,
            Kind::Dir(_) => FileType::Directory,
            Kind::Sym(_) => FileType::Symlink,
        }
    }

    fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir(_))
    }

    fn size(&self) -> u64 {
        match &self.kind {
            Kind::File(d) => d.len() as u64,
            Kind::Sym(t) => t.len() as u64,
            Kind::Dir(_) => 0,
        }
    }
}

const R: u16 = 4;
const W: u16 = 2;
const X: u16 = 1;

#[derive(Debug)]
struct Model {
    nodes: HashMap<Id, Node>,
    next: Id,
    /// Open handles per node (slots only: path operations close what they open).
    opens: HashMap<Id, u32>,
    slots: [Option<Id>; SLOTS],
    /// The engine's inode number of every node, learnt when the engine created it.
    ino: HashMap<Id, Ino>,
}

/// The outcome of applying an operation to the model: `None` when the operation does not apply
/// (an empty handle slot, chmod of a symlink) and is skipped on both sides.
struct Applied {
    expect: Option<MRes>,
    created: Option<Id>,
}

impl Model {
    fn new(root_mode: u16, root_ino: Ino) -> Model {
        let root = Node {
            kind: Kind::Dir(BTreeMap::new()),
            nlink: 2,
            perm: root_mode,
            uid: 0,
            gid: 0,
            xattrs: BTreeMap::new(),
            parent: ROOT,
        };
        Model {
            nodes: HashMap::from([(ROOT, root)]),
            next: 1,
            opens: HashMap::new(),
            slots: [None; SLOTS],
            ino: HashMap::from([(ROOT, root_ino)]),
        }
    }

    fn node(&self, id: Id) -> &Node {
        &self.nodes[&id]
    }

    fn node_mut(&mut self, id: Id) -> &mut Node {
        self.nodes.get_mut(&id).expect("model node exists")
    }

    fn entries(&self, id: Id) -> Option<&BTreeMap<Vec<u8>, Id>> {
        match &self.node(id).kind {
            Kind::Dir(e) => Some(e),
            _ => None,
        }
    }

    fn entries_mut(&mut self, id: Id) -> &mut BTreeMap<Vec<u8>, Id> {
        match &mut self.node_mut(id).kind {
            Kind::Dir(e) => e,
            _ => panic!("model: {id} is not a directory"),
        }
    }

    fn child(&self, dir: Id, name: &[u8]) -> Option<Id> {
        self.entries(dir).and_then(|e| e.get(name).copied())
    }

    fn allowed(&self, who: Who, id: Id, mask: u16) -> bool {
        let n = self.node(id);
        if who == Who::Root {
            if mask & X != 0 && !n.is_dir() {
                return n.perm & 0o111 != 0;
            }
            return true;
        }
        let bits = if n.uid == USER_UID {
            (n.perm >> 6) & 7
        } else if n.gid == USER_GID {
            (n.perm >> 3) & 7
        } else {
            n.perm & 7
        };
        bits & mask == mask
    }

    fn search(&self, who: Who, dir: Id) -> Result<(), Errno> {
        if !self.node(dir).is_dir() {
            return err(libc::ENOTDIR);
        }
        if !self.allowed(who, dir, X) {
            return err(libc::EACCES);
        }
        Ok(())
    }

    fn modify(&self, who: Who, dir: Id) -> Result<(), Errno> {
        if !self.node(dir).is_dir() {
            return err(libc::ENOTDIR);
        }
        if !self.allowed(who, dir, W | X) {
            return err(libc::EACCES);
        }
        Ok(())
    }

    fn sticky(&self, who: Who, dir: Id, victim: Id) -> Result<(), Errno> {
        let d = self.node(dir);
        if d.perm & 0o1000 != 0
            && who != Who::Root
            && d.uid != USER_UID
            && self.node(victim).uid != USER_UID
        {
            return err(libc::EPERM);
        }
        Ok(())
    }

    fn owner(&self, who: Who, id: Id) -> bool {
        who == Who::Root || self.node(id).uid == USER_UID
    }

    /// Walk `comps` from the root as lookups do: each directory must be searchable.
    fn resolve(&self, who: Who, comps: &[Vec<u8>]) -> Result<Id, Errno> {
        let mut cur = ROOT;
        for c in comps {
            self.search(who, cur)?;
            cur = self.child(cur, c).ok_or(Errno(libc::ENOENT))?;
        }
        Ok(cur)
    }

    /// The node holding the last component (not necessarily a directory) and that name.
    fn parent(&self, who: Who, path: &P) -> Result<(Id, Vec<u8>), Errno> {
        let comps = path.comps();
        let (last, dirs) = comps.split_last().expect("paths are not empty");
        Ok((self.resolve(who, dirs)?, last.clone()))
    }

    fn stat(&self, id: Id) -> St {
        let n = self.node(id);
        St {
            ino: self.ino.get(&id).copied().unwrap_or(Ino(0)),
            kind: n.ftype(),
            size: (!n.is_dir()).then(|| n.size()),
            nlink: n.nlink,
            perm: Mode(u32::from(n.perm)),
            uid: n.uid,
            gid: n.gid,
        }
    }

    fn new_node(&mut self, who: Who, kind: Kind, perm: u16, parent: Id) -> Id {
        let id = self.next;
        self.next += 1;
        let (uid, gid) = who.ids();
        let nlink = if matches!(kind, Kind::Dir(_)) { 2 } else { 1 };
        self.nodes.insert(
            id,
            Node {
                kind,
                nlink,
                perm,
                uid,
                gid,
                xattrs: BTreeMap::new(),
                parent,
            },
        );
        id
    }

    /// Forget a node with no names and no open handles.
    fn maybe_free(&mut self, id: Id) {
        if self.node(id).nlink == 0 && self.opens.get(&id).copied().unwrap_or(0) == 0 {
            self.nodes.remove(&id);
        }
    }

    /// `victim` lost its name in `dir`.
    fn drop_name(&mut self, dir: Id, victim: Id) {
        if self.node(victim).is_dir() {
            self.node_mut(victim).nlink = 0;
            self.node_mut(dir).nlink -= 1;
        } else {
            self.node_mut(victim).nlink -= 1;
        }
        self.maybe_free(victim);
    }

    /// Whether `anc` is `id` or one of its ancestors.
    fn is_ancestor_or_self(&self, anc: Id, mut id: Id) -> bool {
        loop {
            if id == anc {
                return true;
            }
            if id == ROOT {
                return false;
            }
            id = self.node(id).parent;
        }
    }

    fn file_mut(&mut self, id: Id) -> &mut Vec<u8> {
        match &mut self.node_mut(id).kind {
            Kind::File(d) => d,
            _ => panic!("model: {id} is not a file"),
        }
    }

    fn write(&mut self, id: Id, off: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let f = self.file_mut(id);
        let end = off as usize + data.len();
        if f.len() < end {
            f.resize(end, 0);
        }
        f[off as usize..end].copy_from_slice(data);
    }

    fn read(&self, id: Id, off: u64, len: u32) -> Vec<u8> {
        match &self.node(id).kind {
            Kind::File(d) => {
                let start = (off as usize).min(d.len());
                let end = (off as usize + len as usize).min(d.len());
                d[start..end].to_vec()
            }
            _ => panic!("model: read of a non-file"),
        }
    }

    fn close_slot(&mut self, slot: usize) {
        if let Some(id) = self.slots[slot].take() {
            let n = self.opens.get_mut(&id).expect("open count");
            *n -= 1;
            if *n == 0 {
                self.opens.remove(&id);
            }
            self.maybe_free(id);
        }
    }

    fn apply(&mut self, op: &Op) -> Applied {
        let mut created = None;
        let expect = match op {
            Op::HWrite { slot, .. }
            | Op::HRead { slot, .. }
            | Op::HTruncate { slot, .. }
            | Op::HStat { slot }
            | Op::HClose { slot }
                if self.slots[*slot].is_none() =>
            {
                None
            }
            Op::Chmod { who, path, .. }
                if self
                    .resolve(*who, &path.comps())
                    .is_ok_and(|id| matches!(self.node(id).kind, Kind::Sym(_))) =>
            {
                // chmod follows symlinks; the engine is never asked to chmod one.
                None
            }
            _ => Some(self.apply_op(op, &mut created)),
        };
        Applied { expect, created }
    }

    fn apply_op(&mut self, op: &Op, created: &mut Option<Id>) -> MRes {
        match op {
            Op::Create {
                who,
                path,
                mode,
                excl,
                trunc,
            } => {
                let (p, name) = self.parent(*who, path)?;
                self.search(*who, p)?;
                match self.child(p, &name) {
                    Some(_) if *excl => err(libc::EEXIST),
                    Some(id) => {
                        match self.node(id).kind {
                            Kind::Dir(_) => return err(libc::EISDIR),
                            Kind::Sym(_) => return err(libc::ELOOP),
                            Kind::File(_) => {}
                        }
                        if !self.allowed(*who, id, W) {
                            return err(libc::EACCES);
                        }
                        if *trunc {
                            self.file_mut(id).clear();
                        }
                        Ok(Out::Unit)
                    }
                    None => {
                        self.modify(*who, p)?;
                        let id = self.new_node(*who, Kind::File(Vec::new()), mode.0 as u16, p);
                        self.entries_mut(p).insert(name, id);
                        *created = Some(id);
                        Ok(Out::Unit)
                    }
                }
            }
            Op::Mkdir { who, path, mode } => {
                let (p, name) = self.parent(*who, path)?;
                self.search(*who, p)?;
                if self.child(p, &name).is_some() {
                    return err(libc::EEXIST);
                }
                self.modify(*who, p)?;
                let id = self.new_node(*who, Kind::Dir(BTreeMap::new()), mode.0 as u16, p);
                self.entries_mut(p).insert(name, id);
                self.node_mut(p).nlink += 1;
                *created = Some(id);
                Ok(Out::Unit)
            }
            Op::Symlink { path, target } => {
                let (p, name) = self.parent(Who::Root, path)?;
                self.search(Who::Root, p)?;
                if self.child(p, &name).is_some() {
                    return err(libc::EEXIST);
                }
                self.modify(Who::Root, p)?;
                let id = self.new_node(Who::Root, Kind::Sym(target.as_bytes().to_vec()), 0o777, p);
                self.entries_mut(p).insert(name, id);
                *created = Some(id);
                Ok(Out::Unit)
            }
            Op::Readlink { path } => {
                let id = self.resolve(Who::Root, &path.comps())?;
                match &self.node(id).kind {
                    Kind::Sym(t) => Ok(Out::Data(Data(t.clone()))),
                    _ => err(libc::EINVAL),
                }
            }
            Op::Write {
                who,
                path,
                off,
                len,
                seed,
            } => {
                let id = self.resolve(*who, &path.comps())?;
                match self.node(id).kind {
                    Kind::Dir(_) => return err(libc::EISDIR),
                    Kind::Sym(_) => return err(libc::ELOOP),
                    Kind::File(_) => {}
                }
                if !self.allowed(*who, id, W) {
                    return err(libc::EACCES);
                }
                self.write(id, *off, &pattern(*seed, *off, *len));
                Ok(Out::Len(*len as u32))
            }
            Op::Read {
                who,
                path,
                off,
                len,
            } => {
                let id = self.resolve(*who, &path.comps())?;
                if matches!(self.node(id).kind, Kind::Sym(_)) {
                    return err(libc::ELOOP);
                }
                if !self.allowed(*who, id, R) {
                    return err(libc::EACCES);
                }
                if self.node(id).is_dir() {
                    return Ok(Out::Unit);
                }
                Ok(Out::Data(Data(self.read(id, *off, *len))))
            }
            Op::Truncate { who, path, size } => {
                let id = self.resolve(*who, &path.comps())?;
                match self.node(id).kind {
                    Kind::Dir(_) => return err(libc::EISDIR),
                    Kind::Sym(_) => return err(libc::EINVAL),
                    Kind::File(_) => {}
                }
                if !self.allowed(*who, id, W) {
                    return err(libc::EACCES);
                }
                self.file_mut(id).resize(*size as usize, 0);
                Ok(Out::Unit)
            }
            Op::Unlink { who, path } | Op::Rmdir { who, path } => {
                let rmdir = matches!(op, Op::Rmdir { .. });
                let (p, name) = self.parent(*who, path)?;
                self.search(*who, p)?;
                let id = self.child(p, &name).ok_or(Errno(libc::ENOENT))?;
                self.modify(*who, p)?;
                self.sticky(*who, p, id)?;
                let is_dir = self.node(id).is_dir();
                if rmdir && !is_dir {
                    return err(libc::ENOTDIR);
                }
                if !rmdir && is_dir {
                    return err(libc::EISDIR);
                }
                if is_dir && !self.entries(id).is_some_and(BTreeMap::is_empty) {
                    return err(libc::ENOTEMPTY);
                }
                self.entries_mut(p).remove(&name);
                self.drop_name(p, id);
                Ok(Out::Unit)
            }
            Op::Rename { from, to, flags } => self.rename(from, to, *flags),
            Op::Link { from, to } => {
                let id = self.resolve(Who::Root, &from.comps())?;
                let (p, name) = self.parent(Who::Root, to)?;
                self.search(Who::Root, p)?;
                if self.child(p, &name).is_some() {
                    return err(libc::EEXIST);
                }
                self.modify(Who::Root, p)?;
                if self.node(id).is_dir() {
                    return err(libc::EPERM);
                }
                self.node_mut(id).nlink += 1;
                self.entries_mut(p).insert(name, id);
                Ok(Out::Unit)
            }
            Op::SetXattr {
                who,
                path,
                name,
                value,
                mode,
            } => {
                let id = self.resolve(*who, &path.comps())?;
                self.check_xattr_write(*who, id)?;
                let exists = self.node(id).xattrs.contains_key(*name);
                match mode {
                    XattrMode::Create if exists => return err(libc::EEXIST),
                    XattrMode::Replace if !exists => return err(libc::ENODATA),
                    _ => {}
                }
                self.node_mut(id)
                    .xattrs
                    .insert(name.to_string(), value.clone());
                Ok(Out::Unit)
            }
            Op::GetXattr { who, path, name } => {
                let id = self.resolve(*who, &path.comps())?;
                if !self.allowed(*who, id, R) {
                    return err(libc::EACCES);
                }
                match self.node(id).xattrs.get(*name) {
                    Some(v) => Ok(Out::Data(Data(v.clone()))),
                    None => err(libc::ENODATA),
                }
            }
            Op::RemoveXattr { who, path, name } => {
                let id = self.resolve(*who, &path.comps())?;
                self.check_xattr_write(*who, id)?;
                match self.node_mut(id).xattrs.remove(*name) {
                    Some(_) => Ok(Out::Unit),
                    None => err(libc::ENODATA),
                }
            }
            Op::ListXattr { path } => {
                let id = self.resolve(Who::Root, &path.comps())?;
                Ok(Out::Names(self.node(id).xattrs.keys().cloned().collect()))
            }
            Op::Chmod { who, path, mode } => {
                let id = self.resolve(*who, &path.comps())?;
                if !self.owner(*who, id) {
                    return err(libc::EPERM);
                }
                self.node_mut(id).perm = mode.0 as u16;
                Ok(Out::Unit)
            }
            Op::Stat { who, path } => {
                let id = self.resolve(*who, &path.comps())?;
                Ok(Out::Stat(self.stat(id)))
            }
            Op::HOpen { slot, path } => {
                self.close_slot(*slot);
                let id = self.resolve(Who::Root, &path.comps())?;
                match self.node(id).kind {
                    Kind::Dir(_) => return err(libc::EISDIR),
                    Kind::Sym(_) => return err(libc::ELOOP),
                    Kind::File(_) => {}
                }
                *self.opens.entry(id).or_default() += 1;
                self.slots[*slot] = Some(id);
                Ok(Out::Unit)
            }
            Op::HWrite {
                slot,
                off,
                len,
                seed,
            } => {
                let id = self.slots[*slot].expect("slot checked");
                self.write(id, *off, &pattern(*seed, *off, *len));
                Ok(Out::Len(*len as u32))
            }
            Op::HRead { slot, off, len } => {
                let id = self.slots[*slot].expect("slot checked");
                Ok(Out::Data(Data(self.read(id, *off, *len))))
            }
            Op::HTruncate { slot, size } => {
                let id = self.slots[*slot].expect("slot checked");
                self.file_mut(id).resize(*size as usize, 0);
                Ok(Out::Unit)
            }
            Op::HStat { slot } => {
                let id = self.slots[*slot].expect("slot checked");
                Ok(Out::Stat(self.stat(id)))
            }
            Op::HClose { slot } => {
                self.close_slot(*slot);
                Ok(Out::Unit)
            }
        }
    }

    fn check_xattr_write(&self, who: Who, id: Id) -> Result<(), Errno> {
        let n = self.node(id);
        if matches!(n.kind, Kind::Sym(_)) {
            return err(libc::EPERM);
        }
        if n.is_dir() && n.perm & 0o1000 != 0 && !self.owner(who, id) {
            return err(libc::EPERM);
        }
        if !self.allowed(who, id, W) {
            return err(libc::EACCES);
        }
        Ok(())
    }

    /// `renameat2` as Linux orders its checks: both parents resolved, source looked up,
    /// NOREPLACE/EXCHANGE, the ancestry traps, same inode, then type and emptiness checks.
    fn rename(&mut self, from: &P, to: &P, flags: RFlags) -> MRes {
        let (sp, sname) = self.parent(Who::Root, from)?;
        let (dp, dname) = self.parent(Who::Root, to)?;
        if flags == RFlags::Both {
            return err(libc::EINVAL);
        }
        self.search(Who::Root, sp)?;
        self.search(Who::Root, dp)?;
        let s = self.child(sp, &sname).ok_or(Errno(libc::ENOENT))?;
        let d = self.child(dp, &dname);
        if flags == RFlags::NoReplace && d.is_some() {
            return err(libc::EEXIST);
        }
        if flags == RFlags::Exchange && d.is_none() {
            return err(libc::ENOENT);
        }
        if d == Some(s) {
            return Ok(Out::Unit);
        }
        let s_dir = self.node(s).is_dir();
        if s_dir && sp != dp && self.is_ancestor_or_self(s, dp) {
            return err(libc::EINVAL);
        }
        if flags == RFlags::Exchange {
            let d = d.expect("checked");
            let d_dir = self.node(d).is_dir();
            if d_dir && sp != dp && self.is_ancestor_or_self(d, sp) {
                return err(libc::EINVAL);
            }
            self.entries_mut(sp).insert(sname, d);
            self.entries_mut(dp).insert(dname, s);
            if sp != dp {
                if s_dir {
                    self.node_mut(s).parent = dp;
                    self.node_mut(sp).nlink -= 1;
                    self.node_mut(dp).nlink += 1;
                }
                if d_dir {
                    self.node_mut(d).parent = sp;
                    self.node_mut(dp).nlink -= 1;
                    self.node_mut(sp).nlink += 1;
                }
            }
            return Ok(Out::Unit);
        }
        if let Some(d) = d {
            let d_dir = self.node(d).is_dir();
            if d_dir && sp != dp && self.is_ancestor_or_self(d, sp) {
                return err(libc::ENOTEMPTY);
            }
            if s_dir && !d_dir {
                return err(libc::ENOTDIR);
            }
            if !s_dir && d_dir {
                return err(libc::EISDIR);
            }
            if d_dir && !self.entries(d).is_some_and(BTreeMap::is_empty) {
                return err(libc::ENOTEMPTY);
            }
        }
        self.entries_mut(sp).remove(&sname);
        if let Some(d) = d {
            self.entries_mut(dp).remove(&dname);
            self.drop_name(dp, d);
        }
        self.entries_mut(dp).insert(dname, s);
        if s_dir && sp != dp {
            self.node_mut(s).parent = dp;
            self.node_mut(sp).nlink -= 1;
            self.node_mut(dp).nlink += 1;
        }
        Ok(Out::Unit)
    }
}

// ---------------------------------------------------------------------------------------------
// The engine side
// ---------------------------------------------------------------------------------------------

struct Sut {
    vol: Volume,
    slots: [Option<(FileHandle, Ino)>; SLOTS],
}

impl Sut {
    async fn resolve(&self, who: Who, comps: &[Vec<u8>]) -> ERes<Ino> {
        let c = who.caller();
        let mut cur = Ino::ROOT;
        for name in comps {
            cur = self.vol.lookup(&c, cur, name).await?.ino;
        }
        Ok(cur)
    }

    async fn parent(&self, who: Who, path: &P) -> ERes<(Ino, Vec<u8>)> {
        let comps = path.comps();
        let (last, dirs) = comps.split_last().expect("paths are not empty");
        Ok((self.resolve(who, dirs).await?, last.clone()))
    }

    async fn close_slot(&mut self, slot: usize) -> ERes<()> {
        if let Some((fh, _)) = self.slots[slot].take() {
            self.vol.release(&Caller::root(), fh).await?;
        }
        Ok(())
    }

    fn slot(&self, slot: usize) -> (FileHandle, Ino) {
        self.slots[slot].expect("the model said the slot is open")
    }

    /// Apply `op`; returns the result and the inode created, if any.
    async fn apply(&mut self, op: &Op) -> (ERes<Out>, Option<Ino>) {
        let mut created = None;
        let r = self.apply_op(op, &mut created).await;
        (r, created)
    }

    async fn apply_op(&mut self, op: &Op, created: &mut Option<Ino>) -> ERes<Out> {
        let vol = self.vol.clone();
        let root = Caller::root();
        match op {
            Op::Create {
                who,
                path,
                mode,
                excl,
                trunc,
            } => {
                let c = who.caller();
                let (p, name) = self.parent(*who, path).await?;
                let mut flags = libc::O_WRONLY | libc::O_CREAT;
                if *excl {
                    flags |= libc::O_EXCL;
                }
                if *trunc {
                    flags |= libc::O_TRUNC;
                }
                let (attr, fh) = vol.create(&c, p, &name, mode.0, flags).await?;
                *created = Some(attr.ino);
                vol.release(&c, fh).await?;
                Ok(Out::Unit)
            }
            Op::Mkdir { who, path, mode } => {
                let (p, name) = self.parent(*who, path).await?;
                let attr = vol.mkdir(&who.caller(), p, &name, mode.0).await?;
                *created = Some(attr.ino);
                Ok(Out::Unit)
            }
            Op::Symlink { path, target } => {
                let (p, name) = self.parent(Who::Root, path).await?;
                let attr = vol.symlink(&root, p, &name, target.as_bytes()).await?;
                *created = Some(attr.ino);
                Ok(Out::Unit)
            }
            Op::Readlink { path } => {
                let ino = self.resolve(Who::Root, &path.comps()).await?;
                Ok(Out::Data(Data(vol.readlink(&root, ino).await?)))
            }
            Op::Write {
                who,
                path,
                off,
                len,
                seed,
            } => {
                let c = who.caller();
                let ino = self.resolve(*who, &path.comps()).await?;
                let fh = vol.open(&c, ino, libc::O_WRONLY).await?;
                let written = vol.write(&c, fh, *off, &pattern(*seed, *off, *len)).await;
                let released = vol.release(&c, fh).await;
                let n = written?;
                released?;
                Ok(Out::Len(n))
            }
            Op::Read {
                who,
                path,
                off,
                len,
            } => {
                let c = who.caller();
                let ino = self.resolve(*who, &path.comps()).await?;
                let fh = vol.open(&c, ino, libc::O_RDONLY).await?;
                let attr = vol.getattr(&c, ino).await;
                let out = match attr {
                    Ok(a) if a.kind == FileType::Directory => Ok(Out::Unit),
                    Ok(_) => vol
                        .read(&c, fh, *off, *len)
                        .await
                        .map(|b| Out::Data(Data(b.to_vec()))),
                    Err(e) => Err(e),
                };
                let released = vol.release(&c, fh).await;
                let out = out?;
                released?;
                Ok(out)
            }
            Op::Truncate { who, path, size } => {
                let ino = self.resolve(*who, &path.comps()).await?;
                let set = SetAttr {
                    size: Some(*size),
                    ..SetAttr::default()
                };
                vol.setattr(&who.caller(), ino, &set).await?;
                Ok(Out::Unit)
            }
            Op::Unlink { who, path } => {
                let (p, name) = self.parent(*who, path).await?;
                vol.unlink(&who.caller(), p, &name).await?;
                Ok(Out::Unit)
            }
            Op::Rmdir { who, path } => {
                let (p, name) = self.parent(*who, path).await?;
                vol.rmdir(&who.caller(), p, &name).await?;
                Ok(Out::Unit)
            }
            Op::Rename { from, to, flags } => {
                let (sp, sname) = self.parent(Who::Root, from).await?;
                let (dp, dname) = self.parent(Who::Root, to).await?;
                vol.rename(&root, sp, &sname, dp, &dname, flags.to_engine())
                    .await?;
                Ok(Out::Unit)
            }
            Op::Link { from, to } => {
                let ino = self.resolve(Who::Root, &from.comps()).await?;
                let (p, name) = self.parent(Who::Root, to).await?;
                vol.link(&root, ino, p, &name).await?;
                Ok(Out::Unit)
            }
            Op::SetXattr {
                who,
                path,
                name,
                value,
                mode,
            } => {
                let ino = self.resolve(*who, &path.comps()).await?;
                vol.setxattr(&who.caller(), ino, name.as_bytes(), value, *mode)
                    .await?;
                Ok(Out::Unit)
            }
            Op::GetXattr { who, path, name } => {
                let ino = self.resolve(*who, &path.comps()).await?;
                Ok(Out::Data(Data(
                    vol.getxattr(&who.caller(), ino, name.as_bytes()).await?,
                )))
            }
            Op::RemoveXattr { who, path, name } => {
                let ino = self.resolve(*who, &path.comps()).await?;
                vol.removexattr(&who.caller(), ino, name.as_bytes()).await?;
                Ok(Out::Unit)
            }
            Op::ListXattr { path } => {
                let ino = self.resolve(Who::Root, &path.comps()).await?;
                let names = vol.listxattr(&root, ino).await?;
                Ok(Out::Names(
                    names
                        .iter()
                        .map(|n| String::from_utf8_lossy(n).into_owned())
                        .collect(),
                ))
            }
            Op::Chmod { who, path, mode } => {
                let ino = self.resolve(*who, &path.comps()).await?;
                let set = SetAttr {
                    mode: Some(mode.0),
                    ..SetAttr::default()
                };
                vol.setattr(&who.caller(), ino, &set).await?;
                Ok(Out::Unit)
            }
            Op::Stat { who, path } => {
                let c = who.caller();
                let comps = path.comps();
                let (last, dirs) = comps.split_last().expect("paths are not empty");
                let dir = self.resolve(*who, dirs).await?;
                Ok(Out::Stat(St::of(&vol.lookup(&c, dir, last).await?)))
            }
            Op::HOpen { slot, path } => {
                self.close_slot(*slot).await?;
                let ino = self.resolve(Who::Root, &path.comps()).await?;
                let fh = vol.open(&root, ino, libc::O_RDWR).await?;
                self.slots[*slot] = Some((fh, ino));
                Ok(Out::Unit)
            }
            Op::HWrite {
                slot,
                off,
                len,
                seed,
            } => {
                let (fh, _) = self.slot(*slot);
                Ok(Out::Len(
                    vol.write(&root, fh, *off, &pattern(*seed, *off, *len))
                        .await?,
                ))
            }
            Op::HRead { slot, off, len } => {
                let (fh, _) = self.slot(*slot);
                Ok(Out::Data(Data(
                    vol.read(&root, fh, *off, *len).await?.to_vec(),
                )))
            }
            Op::HTruncate { slot, size } => {
                let (fh, ino) = self.slot(*slot);
                let set = SetAttr {
                    size: Some(*size),
                    handle: Some(fh),
                    ..SetAttr::default()
                };
                vol.setattr(&root, ino, &set).await?;
                Ok(Out::Unit)
            }
            Op::HStat { slot } => {
                let (_, ino) = self.slot(*slot);
                Ok(Out::Stat(St::of(&vol.getattr(&root, ino).await?)))
            }
            Op::HClose { slot } => {
                self.close_slot(*slot).await?;
                Ok(Out::Unit)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running a sequence
// ---------------------------------------------------------------------------------------------

/// How often each operation ended with each result, to see that the generator reaches the
/// interesting cases (printed with `--nocapture`).
static STATS: std::sync::Mutex<BTreeMap<String, u64>> = std::sync::Mutex::new(BTreeMap::new());

fn record(op: &Op, result: &MRes) {
    let name = format!("{op:?}");
    let name = name
        .split([' ', '{'])
        .next()
        .unwrap_or_default()
        .to_string();
    let outcome = match result {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("{e:?}"),
    };
    *STATS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(format!("{name} -> {outcome}"))
        .or_default() += 1;
}

fn print_stats() {
    let stats = STATS.lock().unwrap_or_else(|p| p.into_inner());
    let lines: Vec<String> = stats.iter().map(|(k, v)| format!("  {k}: {v}")).collect();
    println!("operation outcomes:\n{}", lines.join("\n"));
}

fn show_ops(ops: &[Op], upto: usize) -> String {
    ops.iter()
        .take(upto + 1)
        .enumerate()
        .map(|(i, op)| format!("  {i:>2}: {op:?}\n"))
        .collect()
}

/// Where two byte strings first differ, for readable failures.
fn first_diff(a: &[u8], b: &[u8]) -> String {
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

fn compare(step: usize, ops: &[Op], got: &ERes<Out>, want: &MRes) -> Result<(), String> {
    let same = match (got, want) {
        (Ok(g), Ok(w)) => g == w,
        (Err(g), Err(w)) => g.errno == *w,
        _ => false,
    };
    if same {
        return Ok(());
    }
    let mut detail = String::new();
    if let (Ok(Out::Data(g)), Ok(Out::Data(w))) = (got, want) {
        detail = format!("\n  {}", first_diff(&g.0, &w.0));
    }
    Err(format!(
        "step {step}: {:?}\n  engine: {got:?}\n  model:  {want:?}{detail}\nsequence:\n{}",
        ops[step],
        show_ops(ops, step)
    ))
}

/// Two engines on one store: one with the default configuration, one whose write buffer holds
/// only two blocks, so that writes also flush in the middle of a sequence.
struct Engines {
    default: Engine,
    small_buffer: Engine,
}

impl Engines {
    async fn open(url: Option<&str>) -> Engines {
        let small = EngineConfig {
            write_buffer_bytes: 2 * BLOCK,
            ..EngineConfig::default()
        };
        let (default, small_buffer) = match url {
            None => {
                let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
                (
                    Engine::with_backend(backend.clone(), EngineConfig::default()).await,
                    Engine::with_backend(backend, small).await,
                )
            }
            Some(url) => (
                Engine::open(url, EngineConfig::default()).await,
                Engine::open(url, small).await,
            ),
        };
        Engines {
            default: default.expect("open engine"),
            small_buffer: small_buffer.expect("open engine"),
        }
    }

    async fn close(self) {
        self.default.close().await.expect("close engine");
        self.small_buffer.close().await.expect("close engine");
    }
}

/// Run one sequence on a fresh tenant; the tenant is deleted when the sequence passes.
async fn run_sequence(engines: &Engines, small_buffer: bool, ops: &[Op]) -> Result<(), String> {
    let engine = if small_buffer {
        &engines.small_buffer
    } else {
        &engines.default
    };
    let options = TenantOptions {
        block_size: BLOCK as u32,
        root_mode: 0o1777,
        ..TenantOptions::default()
    };
    let tenant = unique_tenant_name();
    engine
        .create_tenant(&tenant, options)
        .await
        .map_err(|e| format!("create tenant: {e}"))?;
    let vol = engine
        .volume(&tenant)
        .await
        .map_err(|e| format!("open volume: {e}"))?;
    check_sequence(engine, &tenant, vol, ops).await?;
    engine
        .delete_tenant(&tenant)
        .await
        .map_err(|e| format!("delete tenant: {e}"))
}

async fn check_sequence(
    engine: &Engine,
    tenant: &str,
    vol: Volume,
    ops: &[Op],
) -> Result<(), String> {
    let mut sut = Sut {
        vol: vol.clone(),
        slots: [None; SLOTS],
    };
    let mut model = Model::new(0o1777, Ino::ROOT);
    let mut seen_inos: BTreeSet<Ino> = BTreeSet::from([Ino::ROOT]);
    for (step, op) in ops.iter().enumerate() {
        let applied = model.apply(op);
        let Some(want) = applied.expect else { continue };
        let (got, created) = sut.apply(op).await;
        compare(step, ops, &got, &want)?;
        record(op, &want);
        if let Some(id) = applied.created {
            let ino = created.ok_or_else(|| {
                format!(
                    "step {step}: the engine created no inode\n{}",
                    show_ops(ops, step)
                )
            })?;
            if !seen_inos.insert(ino) {
                return Err(format!(
                    "step {step}: inode number {ino} reused\n{}",
                    show_ops(ops, step)
                ));
            }
            model.ino.insert(id, ino);
        }
    }
    let all = show_ops(ops, ops.len());
    // Close every handle: orphans are reclaimed, buffers flushed.
    for slot in 0..SLOTS {
        model.close_slot(slot);
        sut.close_slot(slot)
            .await
            .map_err(|e| format!("final release of slot {slot}: {e:?}\nsequence:\n{all}"))?;
    }
    check_tree(engine, tenant, &vol, &model)
        .await
        .map_err(|e| format!("final tree check: {e}\nsequence:\n{all}"))?;
    Ok(())
}

/// Walk the engine's tree through readdir and compare every node with the model, then the
/// tenant's usage with what the model's nodes charge.
async fn check_tree(
    engine: &Engine,
    tenant: &str,
    vol: &Volume,
    model: &Model,
) -> Result<(), String> {
    let root = Caller::root();
    let mut visited: BTreeSet<Id> = BTreeSet::new();
    let mut reached: BTreeSet<Id> = BTreeSet::from([ROOT]);
    let mut stack: Vec<(Id, String)> = vec![(ROOT, String::new())];
    let e = |what: String| move |err: FsError| format!("{what}: {err}");
    while let Some((dir, path)) = stack.pop() {
        visited.insert(dir);
        let dino = model.ino[&dir];
        let parent_ino = model.ino[&model.node(dir).parent];
        let listing = readdir_all(vol, dino)
            .await
            .map_err(e(format!("readdir {path}/")))?;
        let mut names: BTreeMap<Vec<u8>, (Ino, FileType)> = BTreeMap::new();
        for entry in &listing {
            match &entry.name[..] {
                b"." if entry.ino == dino => {}
                b".." if entry.ino == parent_ino => {}
                b"." | b".." => {
                    return Err(format!(
                        "{path}/: entry {:?} is inode {}, expected {}",
                        String::from_utf8_lossy(&entry.name),
                        entry.ino,
                        if entry.name == b"." { dino } else { parent_ino }
                    ));
                }
                name => {
                    if names
                        .insert(name.to_vec(), (entry.ino, entry.kind))
                        .is_some()
                    {
                        return Err(format!(
                            "{path}/: name {:?} listed twice",
                            String::from_utf8_lossy(name)
                        ));
                    }
                }
            }
        }
        let plus = readdirplus_all(vol, dino)
            .await
            .map_err(e(format!("readdirplus {path}/")))?;
        let expected = model.entries(dir).expect("a directory");
        let got_names: Vec<String> = names
            .keys()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect();
        let want_names: Vec<String> = expected
            .keys()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect();
        if got_names != want_names {
            return Err(format!(
                "{path}/ lists {got_names:?}, model has {want_names:?}"
            ));
        }
        for (name, &id) in expected {
            let child_path = format!("{path}/{}", String::from_utf8_lossy(name));
            let node = model.node(id);
            reached.insert(id);
            let (ino, kind) = names[name];
            let want = model.stat(id);
            if (ino, kind) != (want.ino, want.kind) {
                return Err(format!(
                    "{child_path}: listed as inode {ino} {kind:?}, model {want:?}"
                ));
            }
            let attr = vol
                .getattr(&root, ino)
                .await
                .map_err(e(format!("getattr {child_path}")))?;
            let got = St::of(&attr);
            if got != want {
                return Err(format!("{child_path}: stat {got:?}, model {want:?}"));
            }
            match plus.iter().find(|(d, _)| d.name == *name) {
                Some((_, a)) if St::of(a) == want => {}
                other => {
                    return Err(format!(
                        "{child_path}: readdirplus gives {:?}, model {want:?}",
                        other.map(|(_, a)| St::of(a))
                    ));
                }
            }
            match &node.kind {
                Kind::File(data) => {
                    let content = read_all(vol, ino)
                        .await
                        .map_err(e(format!("read {child_path}")))?;
                    if &content != data {
                        return Err(format!(
                            "{child_path}: content differs from the model: {}",
                            first_diff(&content, data)
                        ));
                    }
                }
                Kind::Sym(target) => {
                    let got = vol
                        .readlink(&root, ino)
                        .await
                        .map_err(e(format!("readlink {child_path}")))?;
                    if &got != target {
                        return Err(format!(
                            "{child_path}: readlink {:?}, model {:?}",
                            String::from_utf8_lossy(&got),
                            String::from_utf8_lossy(target)
                        ));
                    }
                }
                Kind::Dir(_) => {
                    if !visited.contains(&id) {
                        stack.push((id, child_path.clone()));
                    }
                }
            }
            let xnames = vol
                .listxattr(&root, ino)
                .await
                .map_err(e(format!("listxattr {child_path}")))?;
            let mut got_x = BTreeMap::new();
            for n in xnames {
                let v = vol
                    .getxattr(&root, ino, &n)
                    .await
                    .map_err(e(format!("getxattr {child_path}")))?;
                got_x.insert(String::from_utf8_lossy(&n).into_owned(), v);
            }
            if got_x != node.xattrs {
                return Err(format!(
                    "{child_path}: xattrs {got_x:?}, model {:?}",
                    node.xattrs
                ));
            }
        }
    }
    if reached.len() != model.nodes.len() {
        return Err(format!(
            "model bug: {} nodes, {} reachable",
            model.nodes.len(),
            reached.len()
        ));
    }
    // Usage: one inode per live node (root included), bytes as the engine charges them.
    let usage = engine
        .tenant_info(tenant)
        .await
        .map_err(|e| format!("tenant_info: {e}"))?
        .usage;
    let want_inodes = model.nodes.len() as u64;
    let want_bytes: u64 = model
        .nodes
        .values()
        .map(|n| n.size().div_ceil(4096) * 4096)
        .sum();
    if (usage.inodes, usage.bytes) != (want_inodes, want_bytes) {
        return Err(format!(
            "usage is {} inodes / {} bytes, model {want_inodes} / {want_bytes}",
            usage.inodes, usage.bytes
        ));
    }
    Ok(())
}

async fn readdir_all(vol: &Volume, ino: Ino) -> Result<Vec<tarbox_fs::DirEntry>, FsError> {
    let root = Caller::root();
    let fh = vol.opendir(&root, ino).await?;
    let mut out: Vec<tarbox_fs::DirEntry> = Vec::new();
    let mut offset = 0;
    loop {
        let page = vol.readdir(&root, fh, offset).await?;
        let Some(last) = page.last() else { break };
        offset = last.next_offset;
        out.extend(page);
    }
    vol.releasedir(&root, fh).await?;
    Ok(out)
}

async fn readdirplus_all(
    vol: &Volume,
    ino: Ino,
) -> Result<Vec<(tarbox_fs::DirEntry, FileAttr)>, FsError> {
    let root = Caller::root();
    let fh = vol.opendir(&root, ino).await?;
    let mut out: Vec<(tarbox_fs::DirEntry, FileAttr)> = Vec::new();
    let mut offset = 0;
    loop {
        let page = vol.readdirplus(&root, fh, offset).await?;
        let Some((last, _)) = page.last() else { break };
        offset = last.next_offset;
        out.extend(page);
    }
    vol.releasedir(&root, fh).await?;
    Ok(out)
}

async fn read_all(vol: &Volume, ino: Ino) -> Result<Vec<u8>, FsError> {
    let root = Caller::root();
    let fh = vol.open(&root, ino, libc::O_RDONLY).await?;
    let mut out = Vec::new();
    let result = loop {
        // Odd chunk size: reads start inside blocks.
        match vol.read(&root, fh, out.len() as u64, 5000).await {
            Ok(chunk) if chunk.is_empty() => break Ok(()),
            Ok(chunk) => out.extend_from_slice(&chunk),
            Err(e) => break Err(e),
        }
    };
    vol.release(&root, fh).await?;
    result.map(|()| out)
}

// ---------------------------------------------------------------------------------------------
// Test entry points
// ---------------------------------------------------------------------------------------------

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn run_model(url: Option<&str>, cases: u32) {
    let rt = runtime();
    let engines = rt.block_on(Engines::open(url));
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    proptest!(config, |(small_buffer in any::<bool>(), ops in sequence())| {
        if let Err(msg) = rt.block_on(run_sequence(&engines, small_buffer, &ops)) {
            return Err(TestCaseError::fail(msg));
        }
    });
    print_stats();
    rt.block_on(engines.close());
}

mod memory {
    #[test]
    fn model_sequences() {
        super::run_model(None, super::cases(64));
    }
}

mod postgres {
    #[test]
    fn model_sequences() {
        let Some(url) = super::runtime().block_on(tarbox_tests::postgres_url()) else {
            return;
        };
        super::run_model(Some(&url), super::cases(16));
    }
}
