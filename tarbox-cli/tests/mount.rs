//! End-to-end tests: mount with the real `tarbox` binary (memory and PostgreSQL) and run ordinary
//! programs against the mount. Needs root and /dev/fuse; under `CI=true` or
//! `TARBOX_REQUIRE_POSTGRES=1` a missing PostgreSQL or FUSE fails instead of skipping.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod mounted;

use mounted::{BIN, Mount, Store, fuse_available, pg_url, run};

macro_rules! e2e {
    ($($name:ident),* $(,)?) => {
        mod memory { $( #[test] fn $name() { if super::fuse_available() { if let Some(m) = super::Mount::new(super::Store::Memory) { super::$name(m) } } } )* }
        mod postgres { $( #[test] fn $name() { if super::fuse_available() { if let Some(m) = super::Mount::new(super::Store::Postgres) { super::$name(m) } } } )* }
    };
}

e2e!(
    copy_tree_and_diff,
    python_seek_append_read,
    editor_style_save,
    random_offsets_verified_by_hash,
    links_and_special_files,
    git_workflow,
    concurrent_writers,
    control_files_checkpoint_and_rollback,
    audit_trail_names_processes,
    ioctl_and_seek_are_answered_quietly
);

/// Requests the engine serves without a file operation of its own are answered on purpose:
/// `isatty` and terminal ioctls see `ENOTTY`, `SEEK_DATA`/`SEEK_HOLE` find the data of a sparse
/// file, and none of it writes a line to the mount's log.
fn ioctl_and_seek_are_answered_quietly(m: Mount) {
    let script = r#"
import errno, fcntl, os, sys, termios
p = sys.argv[1]
fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
for _ in range(200):
    assert not os.isatty(fd)
try:
    fcntl.ioctl(fd, termios.TIOCGWINSZ, bytes(8))
    raise SystemExit("ioctl succeeded")
except OSError as e:
    assert e.errno == errno.ENOTTY, e
os.pwrite(fd, b"a", 0)
os.pwrite(fd, b"b", 4 << 20)
size = (4 << 20) + 1
assert os.lseek(fd, 0, os.SEEK_DATA) == 0
hole = os.lseek(fd, 0, os.SEEK_HOLE)
assert 0 < hole < (4 << 20), hole
data = os.lseek(fd, hole, os.SEEK_DATA)
assert hole < data <= (4 << 20), (hole, data)
assert os.lseek(fd, 4 << 20, os.SEEK_HOLE) == size
try:
    os.lseek(fd, size + 10, os.SEEK_DATA)
    raise SystemExit("SEEK_DATA past the end succeeded")
except OSError as e:
    assert e.errno == errno.ENXIO, e
os.close(fd)
print("ok")
"#;
    let out = run(Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(m.path("sparse")));
    assert_eq!(out.trim(), "ok");
    let log = m.log();
    assert!(
        !log.contains("Not Implemented") && !log.contains("ioctl"),
        "the mount logged unserved requests:\n{log}"
    );
}

/// The default audit level records changes and closes, with the process that made them.
fn audit_trail_names_processes(m: Mount) {
    sh_ok(
        &m,
        "printf 'hello' > f && cat f > /dev/null && mv f g && rm g",
    );
    let recent = sh_ok(&m, "cat .tarbox/audit/recent");
    for want in ["create", "/f", "close", "(cat)", "rename", "/g", "unlink"] {
        assert!(
            recent.contains(want),
            "{want:?} missing from the audit trail:\n{recent}"
        );
    }
    let read = recent
        .lines()
        .find(|l| l.contains("close") && l.contains("(cat)"))
        .unwrap_or_else(|| panic!("no close by cat:\n{recent}"));
    assert!(read.contains("read=5B"), "{read}");
}

/// `--metrics-addr` serves Prometheus text with per-operation counters and the audit queue.
#[test]
fn metrics_are_served() {
    if !fuse_available() {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let Some(m) = Mount::with_flags(Store::Memory, &["--metrics-addr", &addr]) else {
        return;
    };
    sh_ok(&m, "echo hi > f && cat f > /dev/null");
    let scrape = || -> String {
        use std::io::{Read, Write};
        let mut conn =
            std::net::TcpStream::connect(&addr).expect("connect to the metrics endpoint");
        conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .expect("request");
        let mut body = String::new();
        conn.read_to_string(&mut body).expect("response");
        body
    };
    let body = scrape();
    for want in [
        "tarbox_operations_total{op=\"create\"}",
        "tarbox_operation_duration_seconds_bucket{op=\"read\"",
        "tarbox_written_bytes_total",
        "tarbox_audit_events_total",
    ] {
        assert!(body.contains(want), "{want} missing from /metrics:\n{body}");
    }
}

/// Events queued in a mount are written when it unmounts cleanly.
#[test]
fn audit_events_survive_a_clean_unmount() {
    if !fuse_available() {
        return;
    }
    let Some(mut m) = Mount::new(Store::Postgres) else {
        return;
    };
    sh_ok(&m, "for i in 1 2 3 4 5; do echo $i > f$i; done");
    m.stop();
    let url = pg_url();
    let out = run(Command::new(BIN).args([
        "--database",
        &url,
        "audit",
        "query",
        "-t",
        &m.tenant,
        "--op",
        "create",
        "--output",
        "json",
    ]));
    assert_eq!(out.lines().count(), 5, "{out}");
}

/// A tree written through one mount, exported, imported into another tenant and read through a
/// second mount is the same tree: contents, modes, symlinks and hard links.
#[test]
fn export_import_round_trip_between_mounts() {
    if !fuse_available() {
        return;
    }
    let Some(a) = Mount::new(Store::Postgres) else {
        return;
    };
    sh_ok(
        &a,
        "mkdir -p src/deep && printf 'one\\n' > src/a.txt && head -c 300000 /dev/urandom > src/deep/blob \
         && chmod 0640 src/a.txt && chmod 0750 src/deep && ln -s ../a.txt src/deep/link \
         && ln src/a.txt src/hard && mkfifo src/pipe",
    );
    let tar = tempfile::NamedTempFile::new().expect("temp tar");
    let url = pg_url();
    run(Command::new(BIN)
        .args(["--database", &url, "export", "-t", &a.tenant, "-o"])
        .arg(tar.path()));
    let Some(b) = Mount::new(Store::Postgres) else {
        return;
    };
    run(Command::new(BIN)
        .args(["--database", &url, "import", "-t", &b.tenant])
        .arg(tar.path()));
    // The second mount caches names and attributes for a second.
    std::thread::sleep(Duration::from_millis(1200));
    // diff compares the regular files and symlinks (a fifo pair is only "both fifos").
    let compared = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(a.path("src"))
        .arg(b.path("src"))
        .output()
        .expect("run diff");
    let report = String::from_utf8_lossy(&compared.stdout);
    let differences: Vec<&str> = report
        .lines()
        .filter(|l| !l.ends_with("is a fifo"))
        .collect();
    assert!(differences.is_empty(), "trees differ: {differences:?}");
    let shape = |m: &Mount| {
        sh_ok(
            m,
            "cd src && stat -c '%n %a %h %F' a.txt hard deep deep/link deep/blob pipe",
        )
    };
    assert_eq!(shape(&a), shape(&b));
    let inodes = sh_ok(&b, "stat -c %i src/a.txt src/hard");
    let mut it = inodes.lines();
    assert_eq!(
        it.next(),
        it.next(),
        "hard links are one inode after import"
    );
}

/// Run `sh -c script` in the mount directory; returns (success, stdout, stderr).
fn sh(m: &Mount, script: &str) -> (bool, String, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(m.dir.path())
        .output()
        .expect("run sh");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sh_ok(m: &Mount, script: &str) -> String {
    let (ok, out, err) = sh(m, script);
    assert!(ok, "`{script}` failed: {out}{err}");
    out
}

/// Checkpoint, browse, diff and roll back with ordinary shell tools on `/.tarbox`.
fn control_files_checkpoint_and_rollback(m: Mount) {
    sh_ok(
        &m,
        "mkdir -p src && printf 'fn main() {}\r\n' > src/main.rs && printf 'one\ntwo\nthree' > notes.txt \
         && head -c 300000 /dev/urandom > blob.bin && ln notes.txt hard.txt && ln -s notes.txt link",
    );
    let listing = sh_ok(&m, "ls -a");
    assert!(listing.lines().any(|l| l == ".tarbox"), "{listing}");
    sh_ok(&m, "echo before-refactor > .tarbox/layers/new");
    let list = sh_ok(&m, "cat .tarbox/layers/list");
    assert!(list.contains("\"before-refactor\""), "{list}");
    let current = sh_ok(&m, "cat .tarbox/layers/current");
    assert!(current.contains("\"current\": true"), "{current}");
    assert!(sh_ok(&m, "cat .tarbox/layers/tree").contains("before-refactor"));
    // Change things after the checkpoint.
    sh_ok(
        &m,
        "printf 'one\nTWO\nthree' > notes.txt && rm blob.bin && mv src source && echo new > added.txt",
    );
    let diff = sh_ok(&m, "cat .tarbox/layers/diff");
    assert!(diff.contains("M /notes.txt (+1 -1)"), "{diff}");
    assert!(diff.contains("D /blob.bin"), "{diff}");
    assert!(diff.contains("R /src -> /source"), "{diff}");
    assert!(diff.contains("A /added.txt"), "{diff}");
    assert!(diff.contains("+TWO") && diff.contains("-two"), "{diff}");
    // The checkpoint's tree, browsable and copyable.
    assert_eq!(sh_ok(&m, "ls .tarbox/snapshots").trim(), "before-refactor");
    assert_eq!(
        sh_ok(&m, "cat .tarbox/snapshots/before-refactor/notes.txt"),
        "one\ntwo\nthree"
    );
    sh_ok(
        &m,
        "cp -r .tarbox/snapshots/before-refactor/src ./restored && diff -r restored .tarbox/snapshots/before-refactor/src",
    );
    let (ok, _, _) = sh(&m, "echo x > .tarbox/snapshots/before-refactor/notes.txt");
    assert!(!ok, "a snapshot must be read-only");
    // Rejected commands fail the write and say why.
    let (ok, _, _) = sh(&m, "echo no-such-layer > .tarbox/layers/switch");
    assert!(!ok, "switching to an unknown layer must fail");
    assert!(sh_ok(&m, "cat .tarbox/last_error").contains("not found"));
    let (ok, _, _) = sh(&m, "echo before-refactor > .tarbox/layers/new");
    assert!(!ok, "a taken checkpoint name must fail");
    // Roll back: the tree is exactly the checkpoint's.
    sh_ok(&m, "echo before-refactor > .tarbox/layers/switch");
    assert_eq!(
        std::fs::read(m.path("notes.txt")).expect("notes"),
        b"one\ntwo\nthree"
    );
    assert_eq!(
        std::fs::read(m.path("src/main.rs")).expect("main"),
        b"fn main() {}\r\n"
    );
    assert_eq!(
        std::fs::metadata(m.path("blob.bin")).expect("blob").len(),
        300_000
    );
    assert_eq!(
        std::fs::metadata(m.path("notes.txt"))
            .expect("notes")
            .nlink(),
        2
    );
    assert_eq!(
        std::fs::read_link(m.path("link")).expect("link"),
        Path::new("notes.txt")
    );
    assert!(!m.path("added.txt").exists() && !m.path("source").exists());
    // The abandoned layer is still listed and can be switched back to (roll forward).
    let tree = sh_ok(&m, "cat .tarbox/layers/tree");
    assert_eq!(tree.matches('#').count(), 3, "{tree}");
    let usage = sh_ok(&m, "cat .tarbox/stats/usage");
    assert!(usage.contains("\"checkpoints\": 1"), "{usage}");
    // The control directory is not part of the tree.
    let (ok, _, _) = sh(&m, "mkdir .tarbox");
    assert!(!ok, "mkdir /.tarbox must fail");
    sh_ok(&m, "touch .tarboxrc && rm .tarboxrc");
}

fn copy_tree_and_diff(m: Mount) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("tarbox-fs");
    run(Command::new("cp").arg("-a").arg(&src).arg(m.path("copy")));
    run(Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(&src)
        .arg(m.path("copy")));
    run(Command::new("rm").arg("-r").arg(m.path("copy")));
    assert!(!m.path("copy").exists());
}

fn python_seek_append_read(m: Mount) {
    let script = r#"
import os, sys
p = sys.argv[1]
with open(p, "wb") as f:
    f.write(b"hello")
    f.seek(100)
    f.write(b"world")
with open(p, "ab") as f:
    f.write(b"!")
with open(p, "r+b") as f:
    f.seek(2); f.write(b"LL")
data = open(p, "rb").read()
assert data == b"heLLo" + b"\0" * 95 + b"world!", data
assert os.stat(p).st_size == 106
os.truncate(p, 3)
assert open(p, "rb").read() == b"heL"
print("ok")
"#;
    let out = run(Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(m.path("py.bin")));
    assert_eq!(out.trim(), "ok");
}

fn editor_style_save(m: Mount) {
    let target = m.path("notes.txt");
    std::fs::write(&target, b"version 1\n").expect("write v1");
    for v in 2..5 {
        let tmp = m.path(".notes.txt.swp");
        let mut f = std::fs::File::create(&tmp).expect("create temp");
        f.write_all(format!("version {v}\r\nno newline at end").as_bytes())
            .expect("write temp");
        f.sync_all().expect("fsync temp");
        drop(f);
        std::fs::rename(&tmp, &target).expect("rename over");
        assert_eq!(
            std::fs::read(&target).expect("read"),
            format!("version {v}\r\nno newline at end").as_bytes()
        );
        assert!(!tmp.exists());
    }
}

fn random_offsets_verified_by_hash(m: Mount) {
    const SIZE: u64 = 100 << 20;
    let p = m.path("big.bin");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&p)
        .expect("open");
    f.set_len(SIZE).expect("set_len");
    let mut model = vec![0u8; SIZE as usize];
    let mut x: u64 = 0x9E3779B97F4A7C15;
    for i in 0..400u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = 1 + (x % (300 << 10)) as usize;
        let off = (x >> 20) % (SIZE - len as u64);
        let chunk: Vec<u8> = (0..len).map(|k| (k as u64 ^ i ^ x) as u8).collect();
        f.seek(SeekFrom::Start(off)).expect("seek");
        f.write_all(&chunk).expect("write");
        model[off as usize..off as usize + len].copy_from_slice(&chunk);
    }
    f.sync_all().expect("fsync");
    drop(f);
    let mut back = Vec::with_capacity(SIZE as usize);
    std::fs::File::open(&p)
        .expect("reopen")
        .read_to_end(&mut back)
        .expect("read back");
    assert_eq!(back.len(), model.len());
    assert!(back == model, "content differs from what was written");
}

fn links_and_special_files(m: Mount) {
    std::fs::write(m.path("a"), b"data").expect("write");
    std::fs::hard_link(m.path("a"), m.path("b")).expect("link");
    std::os::unix::fs::symlink("a", m.path("s")).expect("symlink");
    assert_eq!(std::fs::metadata(m.path("a")).expect("stat").nlink(), 2);
    assert_eq!(
        std::fs::read_link(m.path("s")).expect("readlink"),
        Path::new("a")
    );
    assert_eq!(
        std::fs::read(m.path("s")).expect("read through symlink"),
        b"data"
    );
    std::fs::remove_file(m.path("a")).expect("unlink");
    assert_eq!(std::fs::metadata(m.path("b")).expect("stat").nlink(), 1);
    assert!(
        std::fs::metadata(m.path("s")).is_err(),
        "dangling symlink must not resolve"
    );
    run(Command::new("mkfifo").arg(m.path("fifo")));
    assert!(
        std::fs::symlink_metadata(m.path("fifo"))
            .expect("stat fifo")
            .file_type()
            .is_fifo()
    );
    run(Command::new("mknod")
        .arg(m.path("null"))
        .args(["c", "1", "3"]));
    let md = std::fs::symlink_metadata(m.path("null")).expect("stat dev");
    assert_eq!(md.rdev(), libc_makedev(1, 3));
}

fn libc_makedev(major: u64, minor: u64) -> u64 {
    ((major & 0xfffff000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffffff00) << 12)
        | (minor & 0xff)
}

use std::os::unix::fs::FileTypeExt;

fn git_workflow(m: Mount) {
    let repo = m.path("repo");
    std::fs::create_dir(&repo).expect("mkdir");
    let git = |args: &[&str]| {
        run(Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@example.com",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(&repo))
    };
    git(&["init", "-q"]);
    std::fs::write(repo.join("a.txt"), b"one\n").expect("write");
    git(&["add", "a.txt"]);
    git(&["commit", "-qm", "first"]);
    git(&["checkout", "-qb", "feature"]);
    std::fs::write(repo.join("a.txt"), b"two\n").expect("write");
    git(&["commit", "-qam", "second"]);
    git(&["checkout", "-q", "main"]);
    assert_eq!(std::fs::read(repo.join("a.txt")).expect("read"), b"one\n");
    assert_eq!(git(&["status", "--porcelain"]).trim(), "");
    assert_eq!(git(&["log", "--oneline", "feature"]).lines().count(), 2);
}

fn concurrent_writers(m: Mount) {
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let p = m.path(&format!("w{t}"));
            std::thread::spawn(move || {
                let mut f = std::fs::File::create(&p).expect("create");
                for i in 0..256u32 {
                    f.write_all(&[(t as u8) ^ (i as u8); 4096]).expect("write");
                }
                f.sync_all().expect("fsync");
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer");
    }
    for t in 0..4u8 {
        let data = std::fs::read(m.path(&format!("w{t}"))).expect("read");
        assert_eq!(data.len(), 256 * 4096);
        for (i, chunk) in data.chunks(4096).enumerate() {
            assert!(
                chunk.iter().all(|&b| b == t ^ i as u8),
                "writer {t} chunk {i} corrupted"
            );
        }
    }
}

/// Everything fsynced before the mount process is killed is there after a remount, and the tree
/// is consistent.
#[test]
fn fsynced_data_survives_sigkill() {
    if !fuse_available() {
        return;
    }
    let Some(mut m) = Mount::new(Store::Postgres) else {
        return;
    };
    std::fs::create_dir(m.path("d")).expect("mkdir");
    for i in 0..20 {
        let mut f = std::fs::File::create(m.path(&format!("d/f{i}"))).expect("create");
        f.write_all(format!("durable {i}\n").repeat(1000).as_bytes())
            .expect("write");
        f.sync_all().expect("fsync");
    }
    // Unsynced writes in flight when the process dies may or may not survive.
    let mut pending = std::fs::File::create(m.path("d/pending")).expect("create pending");
    pending.write_all(b"maybe").expect("write pending");
    m.kill();
    m.start();
    for i in 0..20 {
        let data = std::fs::read(m.path(&format!("d/f{i}"))).expect("fsynced file present");
        assert_eq!(data, format!("durable {i}\n").repeat(1000).as_bytes());
    }
    let names = std::fs::read_dir(m.path("d")).expect("readdir").count();
    assert!(
        names == 20 || names == 21,
        "unexpected entries after crash: {names}"
    );
}

/// A mount killed while write-behind is storing a large file's blocks: what was fsynced reads
/// back whole, and past it the file holds, block by block, either what was written there or
/// nothing (zeros or end of file): never garbage, never another file's data. The tenant keeps
/// its data in a block store in a directory.
#[test]
fn a_killed_pipelined_write_keeps_what_was_fsynced() {
    if !fuse_available() {
        return;
    }
    let blocks = tempfile::tempdir().expect("block store");
    let data_url = format!("file://{}", blocks.path().display());
    let Some(mut m) = Mount::new(Store::PostgresWithData(data_url)) else {
        return;
    };
    const MIB: usize = 1 << 20;
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let data: Vec<u8> = (0..96 * MIB)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    // Another file, so "another file's data" would be recognisable.
    std::fs::write(m.path("other"), vec![0xAB; 4 * MIB]).expect("other");
    let mut f = std::fs::File::create(m.path("checkpoint.bin")).expect("create");
    let fsynced = 40 * MIB;
    f.write_all(&data[..fsynced]).expect("write");
    f.sync_all().expect("fsync");
    // 56 MiB more without fsync: more than three write buffers, so blocks are on their way to
    // the store and staged when the process dies.
    f.write_all(&data[fsynced..]).expect("write on");
    m.kill();
    drop(f);
    m.start();
    let back = std::fs::read(m.path("checkpoint.bin")).expect("read back");
    assert!(back.len() >= fsynced, "fsynced length lost: {}", back.len());
    assert!(back[..fsynced] == data[..fsynced], "fsynced data differs");
    const BLOCK: usize = 256 << 10;
    for (i, chunk) in back[fsynced..].chunks(BLOCK).enumerate() {
        let at = fsynced + i * BLOCK;
        let written = &data[at..at + chunk.len()];
        assert!(
            chunk == written || chunk.iter().all(|&b| b == 0),
            "block at {at} is neither what was written nor empty"
        );
    }
    let fsck = Command::new(BIN)
        .args([
            "--database",
            &pg_url(),
            "fsck",
            "-t",
            &m.tenant,
            "--check-data",
        ])
        .output()
        .expect("fsck");
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

/// `--cache-dir`: a remounted tenant whose blocks live in a directory has them in the cache
/// (written or read once from the store), which outlives the mount; `--cache-size` alone is refused,
/// naming the flag it needs.
#[test]
fn a_disk_cache_keeps_what_was_read_across_mounts() {
    if !fuse_available() {
        return;
    }
    let refused = Command::new(BIN)
        .args(["mount", "--cache-size", "1GiB", "/nonexistent"])
        .output()
        .expect("run tarbox mount");
    assert!(!refused.status.success());
    let says = String::from_utf8_lossy(&refused.stderr);
    assert!(says.contains("--cache-dir"), "{says}");

    let blocks = tempfile::tempdir().expect("block store");
    let cache = tempfile::tempdir().expect("cache dir");
    let data_url = format!("file://{}", blocks.path().display());
    let cache_dir = cache.path().display().to_string();
    let flags = ["--cache-dir", cache_dir.as_str(), "--cache-size", "64MiB"];
    let Some(mut m) = Mount::with_flags(Store::PostgresWithData(data_url), &flags) else {
        return;
    };
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(m.path("dataset.bin"), &data).expect("write");
    m.stop();
    m.start();
    assert!(std::fs::read(m.path("dataset.bin")).expect("read") == data);
    let deadline = Instant::now() + Duration::from_secs(30);
    while tarbox_tests::files_under(cache.path()).len() < 12 {
        assert!(Instant::now() < deadline, "the cache is never filled");
        std::thread::sleep(Duration::from_millis(50));
    }
    m.stop();
    // Remounted with the store's objects gone: every block comes from the cache.
    let tenant_objects = std::fs::read_dir(blocks.path())
        .expect("store")
        .flatten()
        .map(|e| e.path())
        .collect::<Vec<_>>();
    for dir in &tenant_objects {
        std::fs::rename(dir, dir.with_extension("away")).expect("hide the store");
    }
    m.start();
    assert!(
        std::fs::read(m.path("dataset.bin")).expect("read from the cache") == data,
        "{}",
        m.log()
    );
    m.stop();
    for dir in &tenant_objects {
        std::fs::rename(dir.with_extension("away"), dir).expect("bring the store back");
    }
}
