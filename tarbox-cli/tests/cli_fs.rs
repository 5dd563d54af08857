//! The file commands, export and import of the real `tarbox` binary against PostgreSQL, asserting
//! what a user sees: bytes, listings, `stat` output, exit codes and messages.
//!
//! PostgreSQL comes from `TARBOX_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/tarbox_test`, created if missing). When it cannot be
//! reached the tests are skipped with a message, except under `CI=true` or
//! `TARBOX_REQUIRE_POSTGRES=1`, where they fail. Every test works in its own tenant.

use std::io::{Read, Write as _};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_tarbox");

/// The test database URL, or `None` (after a message) when PostgreSQL is not reachable outside
/// CI. Panics in CI when it is not.
fn database() -> Option<String> {
    static URL: OnceLock<Option<String>> = OnceLock::new();
    URL.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(tarbox_tests::postgres_url())
    })
    .clone()
}

fn nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Deterministic pseudo-random bytes (xorshift64*).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A fresh tenant, deleted when dropped.
struct Tenant {
    url: String,
    name: String,
}

impl Tenant {
    fn new(test: &str) -> Option<Tenant> {
        let Some(url) = database() else {
            // Straight to stderr: the test harness hides `eprintln!` of passing tests.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: {test}: PostgreSQL not reachable"
            );
            return None;
        };
        let name = format!("cli-{test}-{}-{}", std::process::id(), nanos());
        let t = Tenant { url, name };
        t.run(&["tenant", "create", &t.name]);
        Some(t)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("--database")
            .arg(&self.url)
            .args(args)
            .env_remove("TARBOX_CONFIG")
            .env("XDG_CONFIG_HOME", "/nonexistent")
            .stdin(Stdio::null());
        cmd
    }

    fn output(&self, cmd: &mut Command) -> Output {
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
    }

    /// Run a command that must succeed; its stdout.
    fn run(&self, args: &[&str]) -> Vec<u8> {
        let mut cmd = self.command(args);
        let out = self.output(&mut cmd);
        assert!(
            out.status.success(),
            "{args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// A `fs` subcommand on this tenant that must succeed; its stdout.
    fn fs(&self, args: &[&str]) -> Vec<u8> {
        let mut all = vec!["fs", args[0], "-t", &self.name];
        all.extend_from_slice(&args[1..]);
        self.run(&all)
    }

    /// A `fs` subcommand on this tenant that must fail with exit code 1 and a message naming
    /// each of `needles`.
    fn fs_fails(&self, args: &[&str], needles: &[&str]) {
        let mut all = vec!["fs", args[0], "-t", &self.name];
        all.extend_from_slice(&args[1..]);
        let out = self.output(&mut self.command(&all));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{all:?}: {err}");
        for needle in needles {
            assert!(err.contains(needle), "{all:?}: {needle:?} not in {err}");
        }
    }

    /// `fs put` from standard input.
    fn put_bytes(&self, remote: &str, data: &[u8]) {
        let mut cmd = self.command(&["fs", "put", "-t", &self.name, "-", remote]);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn tarbox fs put");
        {
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(data).expect("write to tarbox fs put");
        }
        let out = child.wait_with_output().expect("wait for tarbox fs put");
        assert!(
            out.status.success(),
            "fs put - {remote} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn stat(&self, path: &str) -> Value {
        let out = self.fs(&["stat", "--output", "json", path]);
        serde_json::from_slice(&out).expect("stat --output json is JSON")
    }

    fn ls(&self, path: &str) -> Vec<Value> {
        let out = self.fs(&["ls", "--output", "json", path]);
        match serde_json::from_slice(&out).expect("ls --output json is JSON") {
            Value::Array(items) => items,
            other => panic!("ls --output json printed {other}"),
        }
    }

    fn names(&self, path: &str) -> Vec<String> {
        self.ls(path)
            .iter()
            .map(|e| e["name"].as_str().expect("name").to_string())
            .collect()
    }
}

impl Drop for Tenant {
    fn drop(&mut self) {
        let _ = self
            .command(&["tenant", "delete", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn put_cat_get_round_trip() {
    let Some(t) = Tenant::new("copy") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let data = noise(3 << 20, nanos() as u64);
    let local = dir.path().join("random.bin");
    std::fs::write(&local, &data).expect("write local file");
    t.fs(&["put", local.to_str().expect("utf-8 path"), "/random.bin"]);

    let cat = t.fs(&["cat", "/random.bin"]);
    assert!(
        cat == data,
        "cat returned different bytes ({} of {})",
        cat.len(),
        data.len()
    );
    assert_eq!(t.stat("/random.bin")["size"], 3 << 20);

    let back = dir.path().join("back.bin");
    t.fs(&["get", "/random.bin", back.to_str().expect("utf-8 path")]);
    assert!(
        std::fs::read(&back).expect("read back") == data,
        "get wrote different bytes"
    );
    let to_stdout = t.fs(&["get", "/random.bin", "-"]);
    assert!(to_stdout == data, "get - printed different bytes");

    // `put` truncates an existing file; `-` reads standard input.
    t.put_bytes("/random.bin", b"short");
    assert_eq!(t.fs(&["cat", "/random.bin"]), b"short");
    // Into an existing directory, under the local name.
    t.fs(&["mkdir", "/in"]);
    t.fs(&["put", local.to_str().expect("utf-8 path"), "/in"]);
    assert!(t.fs(&["cat", "/in/random.bin"]) == data);

    t.fs_fails(&["cat", "/in"], &["/in", "is a directory"]);
}

#[test]
fn mkdir_ls_mv_rm() {
    let Some(t) = Tenant::new("tree") else { return };
    t.fs(&["mkdir", "-p", "/a/b/c"]);
    t.fs(&["mkdir", "-p", "/a/b"]); // an existing directory is fine with -p
    t.put_bytes("/a/b/f.txt", b"hello\n");
    let listing = t.ls("/a/b");
    let names: Vec<&str> = listing
        .iter()
        .map(|e| e["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["c", "f.txt"]);
    assert_eq!(listing[0]["type"], "directory");
    assert_eq!(listing[0]["path"], "/a/b/c");
    assert_eq!(listing[1]["type"], "regular");
    assert_eq!(listing[1]["size"], 6);
    assert_eq!(listing[1]["mode"], "0644");
    let long = String::from_utf8(t.fs(&["ls", "-l", "/a/b"])).expect("utf-8");
    assert!(
        long.lines()
            .any(|l| l.starts_with("drwxr-xr-x") && l.ends_with(" c")),
        "{long}"
    );
    assert!(
        long.lines()
            .any(|l| l.starts_with("-rw-r--r--") && l.ends_with(" f.txt")),
        "{long}"
    );

    t.fs_fails(&["mkdir", "/x/y"], &["/x/y", "no such file"]);
    t.fs_fails(&["mkdir", "/a"], &["/a", "exists"]);

    // Rename, then move into a directory.
    t.fs(&["mv", "/a/b/f.txt", "/a/g.txt"]);
    assert_eq!(t.names("/a"), ["b", "g.txt"]);
    assert_eq!(t.fs(&["cat", "/a/g.txt"]), b"hello\n");
    t.fs(&["mv", "/a/g.txt", "/a/b/c"]);
    assert_eq!(t.names("/a/b/c"), ["g.txt"]);
    t.fs_fails(&["mv", "/a/missing", "/a/other"], &["/a/missing"]);

    // A directory needs -r.
    t.fs_fails(&["rm", "/a"], &["/a", "-r"]);
    assert_eq!(t.names("/"), ["a"]);
    t.fs(&["rm", "/a/b/c/g.txt"]);
    assert!(t.names("/a/b/c").is_empty());
    t.put_bytes("/a/b/c/again.txt", b"x");
    t.fs(&["rm", "-r", "/a"]);
    assert!(t.names("/").is_empty());
    t.fs_fails(&["rm", "/a"], &["/a", "no such file"]);

    let tree = String::from_utf8(t.fs(&["tree"])).expect("utf-8");
    assert!(tree.contains("0 directories, 0 files"), "{tree}");
}

#[test]
fn missing_paths_are_named() {
    let Some(t) = Tenant::new("missing") else {
        return;
    };
    t.fs_fails(&["stat", "/nope"], &["/nope", "no such file"]);
    t.put_bytes("/file", b"x");
    t.fs_fails(
        &["stat", "/file/below"],
        &["/file/below", "not a directory"],
    );
    t.fs_fails(&["cat", "relative"], &["relative", "absolute"]);
}

/// The fields that a round trip keeps, for comparing two trees.
fn kept(stat: &Value) -> Value {
    let mut v = serde_json::Map::new();
    for key in [
        "type", "mode", "uid", "gid", "size", "mtime_ns", "target", "xattrs", "nlink",
    ] {
        v.insert(key.into(), stat[key].clone());
    }
    Value::Object(v)
}

/// A tar archive made by another program: a file with an owner and an extended attribute.
fn foreign_tar(path: &Path) {
    let file = std::fs::File::create(path).expect("create tar");
    let mut b = tar::Builder::new(file);
    b.append_pax_extensions([("SCHILY.xattr.user.origin", &b"test suite"[..])])
        .expect("pax");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o600);
    h.set_uid(1234);
    h.set_gid(5678);
    h.set_mtime(1_600_000_000);
    h.set_size(11);
    b.append_data(&mut h, "attrs.txt", &b"with xattrs"[..])
        .expect("append");
    b.finish().expect("finish tar");
}

#[test]
fn export_import_round_trip() {
    let Some(a) = Tenant::new("export") else {
        return;
    };
    let Some(b) = Tenant::new("import") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("sub/deeper")).expect("mkdir");
    std::fs::create_dir(src.join("private")).expect("mkdir");
    std::fs::set_permissions(src.join("private"), std::fs::Permissions::from_mode(0o700))
        .expect("chmod");
    let data = noise(300_000, 7);
    std::fs::write(src.join("sub/data.bin"), &data).expect("write");
    std::fs::set_permissions(
        src.join("sub/data.bin"),
        std::fs::Permissions::from_mode(0o640),
    )
    .expect("chmod");
    let when = UNIX_EPOCH + Duration::new(1_650_000_000, 123_456_789);
    std::fs::File::options()
        .write(true)
        .open(src.join("sub/data.bin"))
        .and_then(|f| f.set_modified(when))
        .expect("set mtime");
    std::fs::hard_link(src.join("sub/data.bin"), src.join("hard.bin")).expect("hard link");
    std::os::unix::fs::symlink("sub/data.bin", src.join("link")).expect("symlink");
    std::fs::write(src.join("sub/deeper/run.sh"), "#!/bin/sh\necho hi\n").expect("write");
    std::fs::set_permissions(
        src.join("sub/deeper/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    a.run(&["import", "-t", &a.name, src.to_str().expect("utf-8 path")]);
    let foreign = dir.path().join("foreign.tar");
    foreign_tar(&foreign);
    a.run(&[
        "import",
        "-t",
        &a.name,
        foreign.to_str().expect("utf-8 path"),
        "--into",
        "/sub",
    ]);

    let archive = dir.path().join("a.tar");
    a.run(&[
        "export",
        "-t",
        &a.name,
        "-o",
        archive.to_str().expect("utf-8 path"),
    ]);
    b.run(&[
        "import",
        "-t",
        &b.name,
        archive.to_str().expect("utf-8 path"),
    ]);

    let paths = [
        "/hard.bin",
        "/link",
        "/private",
        "/sub",
        "/sub/attrs.txt",
        "/sub/data.bin",
        "/sub/deeper",
        "/sub/deeper/run.sh",
    ];
    for p in paths {
        assert_eq!(
            kept(&b.stat(p)),
            kept(&a.stat(p)),
            "{p} changed in the round trip"
        );
    }
    let data_stat = b.stat("/sub/data.bin");
    assert_eq!(data_stat["mode"], "0640");
    assert_eq!(data_stat["mtime_ns"], 1_650_000_000_123_456_789i64);
    assert_eq!(data_stat["nlink"], 2);
    assert_eq!(
        b.stat("/hard.bin")["ino"],
        data_stat["ino"],
        "the hard link pair was split"
    );
    assert_eq!(b.stat("/private")["mode"], "0700");
    assert_eq!(b.stat("/sub/deeper/run.sh")["mode"], "0755");
    let link = b.stat("/link");
    assert_eq!(link["type"], "symlink");
    assert_eq!(link["target"], "sub/data.bin");
    let attrs = b.stat("/sub/attrs.txt");
    assert_eq!(attrs["xattrs"]["user.origin"], "test suite");
    assert_eq!(
        (attrs["uid"].clone(), attrs["gid"].clone()),
        (1234.into(), 5678.into())
    );
    assert_eq!(attrs["mode"], "0600");
    assert_eq!(attrs["mtime_ns"], 1_600_000_000_000_000_000i64);
    assert!(b.fs(&["cat", "/sub/data.bin"]) == data, "contents changed");
    assert!(
        b.fs(&["cat", "/link"]) == data,
        "the symlink does not lead to the data"
    );
    assert_eq!(b.fs(&["cat", "/sub/attrs.txt"]), b"with xattrs");

    // The archive is an ordinary tar: GNU tar lists it.
    if let Ok(out) = Command::new("tar").arg("-tvf").arg(&archive).output() {
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "tar -tvf failed");
        assert!(listing.contains("sub/data.bin"), "{listing}");
        assert!(
            listing.contains("link to"),
            "no hard-link entry:\n{listing}"
        );
        assert!(listing.contains("link -> sub/data.bin"), "{listing}");
    }

    // A second import over the same tree overwrites files and keeps the links.
    b.put_bytes("/sub/data.bin", b"changed");
    b.run(&[
        "import",
        "-t",
        &b.name,
        archive.to_str().expect("utf-8 path"),
    ]);
    assert!(b.fs(&["cat", "/hard.bin"]) == data);
    assert_eq!(b.stat("/hard.bin")["ino"], b.stat("/sub/data.bin")["ino"]);
}

#[test]
fn import_local_directory() {
    let Some(t) = Tenant::new("localdir") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path();
    std::fs::create_dir_all(src.join("docs/notes")).expect("mkdir");
    std::fs::write(src.join("README.md"), "# project\n").expect("write");
    std::fs::write(src.join("docs/notes/todo.txt"), "ship it\n").expect("write");
    std::os::unix::fs::symlink("docs/notes/todo.txt", src.join("todo")).expect("symlink");
    let fifo = Command::new("mkfifo")
        .arg(src.join("pipe"))
        .status()
        .is_ok_and(|s| s.success());
    t.run(&[
        "import",
        "-t",
        &t.name,
        src.to_str().expect("utf-8 path"),
        "--into",
        "/dst/x",
    ]);

    let mut expected = vec!["README.md", "docs", "todo"];
    if fifo {
        expected.insert(2, "pipe");
        assert_eq!(t.stat("/dst/x/pipe")["type"], "fifo");
    }
    assert_eq!(t.names("/dst/x"), expected);
    assert_eq!(t.fs(&["cat", "/dst/x/docs/notes/todo.txt"]), b"ship it\n");
    assert_eq!(t.fs(&["cat", "/dst/x/todo"]), b"ship it\n");
    let meta = std::fs::metadata(src.join("README.md")).expect("stat");
    let mtime = meta
        .modified()
        .expect("mtime")
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos() as i64;
    let readme = t.stat("/dst/x/README.md");
    assert_eq!(readme["mtime_ns"], mtime);
    assert_eq!(
        readme["mode"],
        format!("{:04o}", meta.permissions().mode() & 0o7777)
    );
    let tree = String::from_utf8(t.fs(&["tree", "/dst"])).expect("utf-8");
    assert!(tree.contains("│   └── notes"), "{tree}");
    assert!(tree.contains("todo -> docs/notes/todo.txt"), "{tree}");

    // Importing again overwrites regular files of the same path.
    std::fs::write(src.join("README.md"), "# project, v2\n").expect("write");
    t.run(&[
        "import",
        "-t",
        &t.name,
        src.to_str().expect("utf-8 path"),
        "--into",
        "/dst/x",
    ]);
    assert_eq!(t.fs(&["cat", "/dst/x/README.md"]), b"# project, v2\n");

    // A path that exists with another type is refused, naming it.
    std::fs::remove_file(src.join("README.md")).expect("rm");
    std::fs::create_dir(src.join("README.md")).expect("mkdir");
    let out = t
        .command(&[
            "import",
            "-t",
            &t.name,
            src.to_str().expect("utf-8 path"),
            "--into",
            "/dst/x",
        ])
        .output()
        .expect("run import");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/dst/x/README.md") && err.contains("regular file"),
        "{err}"
    );
}

#[test]
fn export_a_checkpoint() {
    let Some(t) = Tenant::new("layer") else {
        return;
    };
    t.put_bytes("/notes.txt", b"before\n");
    t.run(&["layer", "checkpoint", "-t", &t.name, "v1"]);
    t.put_bytes("/notes.txt", b"after, and longer\n");
    t.put_bytes("/new.txt", b"new\n");

    let dir = tempfile::tempdir().expect("tempdir");
    let old = dir.path().join("v1.tar");
    t.run(&[
        "export",
        "-t",
        &t.name,
        "--layer",
        "v1",
        "-o",
        old.to_str().expect("utf-8 path"),
    ]);
    let files = tar_files(&old);
    assert_eq!(files, [("notes.txt".to_string(), b"before\n".to_vec())]);

    let now = dir.path().join("now.tar");
    t.run(&[
        "export",
        "-t",
        &t.name,
        "-o",
        now.to_str().expect("utf-8 path"),
    ]);
    let files = tar_files(&now);
    assert_eq!(
        files,
        [
            ("new.txt".to_string(), b"new\n".to_vec()),
            ("notes.txt".to_string(), b"after, and longer\n".to_vec())
        ]
    );

    // The read-only commands travel in time too.
    assert_eq!(t.fs(&["cat", "--layer", "v1", "/notes.txt"]), b"before\n");
    assert_eq!(t.names("/"), ["new.txt", "notes.txt"]);
    let listed = String::from_utf8(t.fs(&["ls", "--layer", "v1", "/"])).expect("utf-8");
    assert_eq!(listed, "notes.txt\n");
    t.fs_fails(&["cat", "--layer", "v9", "/notes.txt"], &["v9"]);
}

/// The regular files of a tar archive and their contents, in archive order.
fn tar_files(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut archive = tar::Archive::new(std::fs::File::open(path).expect("open tar"));
    let mut out = Vec::new();
    for entry in archive.entries().expect("tar entries") {
        let mut entry = entry.expect("tar entry");
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("read tar entry");
        out.push((name, data));
    }
    out
}

#[test]
fn help_and_completions_need_no_database() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .expect("run completions");
        assert!(out.status.success(), "completions {shell} failed");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("tarbox") && script.contains("export"),
            "{script}"
        );
    }
    for cmd in [
        &["fs", "--help"][..],
        &["fs", "ls", "--help"],
        &["export", "--help"],
        &["import", "--help"],
        &["completions", "--help"],
    ] {
        let out = Command::new(BIN).args(cmd).output().expect("run help");
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Example"), "{cmd:?} has no example:\n{text}");
    }
    let out = Command::new(BIN)
        .args(["fs", "ls", "--bogus"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "a bad flag is a usage error");
}

/// Events of `tarbox audit query --output json`.
fn audit_events(t: &Tenant, filters: &[&str]) -> Vec<Value> {
    let mut args = vec!["audit", "query", "-t", &t.name, "--output", "json"];
    args.extend_from_slice(filters);
    String::from_utf8(t.run(&args))
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect()
}

/// A CLI change is in the audit trail when the command returns, with the command as its caller;
/// queries filter, statistics rank files, and bad values are named.
#[test]
fn audit_trail_of_cli_commands() {
    let Some(t) = Tenant::new("audit") else {
        return;
    };
    t.run(&[
        "audit",
        "config",
        "-t",
        &t.name,
        "--level",
        "basic",
        "--retention-days",
        "7",
    ]);
    t.put_bytes("/a.txt", b"one");
    t.fs(&["mkdir", "/d"]);
    t.fs(&["mv", "/a.txt", "/d/b.txt"]);
    t.run(&["layer", "checkpoint", "-t", &t.name, "cp"]);

    let changes = audit_events(&t, &["--op", "create,mkdir,rename,checkpoint"]);
    let seen: Vec<(&str, &str, &str)> = changes
        .iter()
        .map(|e| {
            (
                e["op"].as_str().unwrap_or(""),
                e["path"].as_str().unwrap_or(""),
                e["path2"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("create", "/a.txt", ""),
            ("mkdir", "/d", ""),
            ("rename", "/a.txt", "/d/b.txt"),
            ("checkpoint", "", ""),
        ]
    );
    for e in &changes {
        assert_ne!(e["pid"], 0, "the command names its process: {e}");
        assert_eq!(e["process"], "tarbox", "{e}");
    }
    let under_d = audit_events(&t, &["--path", "/d"]);
    assert!(
        under_d
            .iter()
            .all(|e| e["path"] == "/d" || e["path2"] == "/d/b.txt"),
        "{under_d:?}"
    );
    assert!(audit_events(&t, &["--result", "denied"]).is_empty());

    // Close records (standard) feed the statistics.
    t.run(&["audit", "config", "-t", &t.name, "--level", "standard"]);
    assert_eq!(t.fs(&["cat", "/d/b.txt"]), b"one");
    let out = t.run(&[
        "audit", "stats", "-t", &t.name, "--by", "file", "--output", "json",
    ]);
    let stats: Value = serde_json::from_slice(&out).expect("stats JSON");
    assert_eq!(stats["top"][0]["key"], "/d/b.txt", "{stats}");
    assert_eq!(stats["top"][0]["bytes_read"], 3, "{stats}");

    let bad = |args: &[&str]| {
        let out = t.output(&mut t.command(args));
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = bad(&["audit", "config", "-t", &t.name, "--level", "loud"]);
    assert_eq!(code, 1);
    assert!(err.contains("loud"), "{err}");
    let (code, err) = bad(&["audit", "query", "-t", &t.name, "--since", "yesterday"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("--since") && err.contains("yesterday"),
        "{err}"
    );
    let (code, err) = bad(&["audit", "query", "-t", &t.name, "--op", "nope"]);
    assert_eq!(code, 2);
    assert!(err.contains("nope"), "{err}");
}
