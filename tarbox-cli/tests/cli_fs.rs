//! The file commands (`fs put`, `cat`, `get`, `stat`, `ls`, `mkdir`, `mv`, `rm`, `tree`) of the
//! real `tarbox` binary against PostgreSQL, and its help and completions, asserting what a user
//! sees: bytes, listings, `stat` output, exit codes and messages. Export and import are tested in
//! `cli_transfer.rs`, the audit commands in `cli_audit.rs`, with the helpers in `common/mod.rs`.
//!
//! PostgreSQL comes from `TARBOX_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/tarbox_test`, created if missing). When it cannot be
//! reached the tests are skipped with a message, except under `CI=true` or
//! `TARBOX_REQUIRE_POSTGRES=1`, where they fail. Every test works in its own tenant.

mod common;

use std::process::Command;

use common::{BIN, Tenant, nanos, noise};

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

#[test]
fn tenant_clone_copies_a_checkpoint_or_the_live_tree() {
    let Some(t) = Tenant::new("clone") else {
        return;
    };
    t.put_bytes("/model", b"v1");
    t.run(&["layer", "checkpoint", "-t", &t.name, "first"]);
    t.put_bytes("/model", b"v2");

    let at_first = format!("{}-first", t.name);
    let live = format!("{}-live", t.name);
    let shown = t.run(&[
        "tenant",
        "clone",
        &t.name,
        &at_first,
        "--at",
        "first",
        "--quota-bytes",
        "1MiB",
    ]);
    assert!(String::from_utf8_lossy(&shown).contains(&at_first));
    t.run(&["tenant", "clone", &t.name, &live]);
    for (clone, want) in [(&at_first, b"v1"), (&live, b"v2")] {
        let got = t.run(&["fs", "cat", "-t", clone, "/model"]);
        assert_eq!(got, want, "{clone}");
        let info: serde_json::Value =
            serde_json::from_slice(&t.run(&["tenant", "info", clone, "--output", "json"]))
                .expect("json");
        if clone == &at_first {
            assert_eq!(info["quota"]["bytes"], 1 << 20);
        }
        t.run(&["tenant", "delete", clone]);
    }
    let out = t.output(&mut t.command(&["tenant", "clone", &t.name, "x-clone", "--at", "nope"]));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nope"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn tenant_with_a_block_store_is_checked_and_collected() {
    let Some(t) = Tenant::new("blocks") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let name = format!("{}-files", t.name);
    let url = format!("file://{}", dir.path().display());
    t.run(&["tenant", "create", &name, "--data", &url]);
    let info = String::from_utf8_lossy(&t.run(&["tenant", "info", &name])).into_owned();
    assert!(info.contains(&format!("data:        {url}")), "{info}");
    let base = String::from_utf8_lossy(&t.run(&["tenant", "info", &t.name])).into_owned();
    assert!(
        base.contains("data:        postgres (in the database)"),
        "{base}"
    );

    let data = noise(700_000, 3);
    let local = dir.path().join("weights.bin");
    std::fs::write(&local, &data).expect("write local file");
    t.run(&[
        "fs",
        "put",
        "-t",
        &name,
        local.to_str().expect("utf-8"),
        "/weights.bin",
    ]);
    assert!(t.run(&["fs", "cat", "-t", &name, "/weights.bin"]) == data);
    let checked =
        String::from_utf8_lossy(&t.run(&["fsck", "-t", &name, "--check-data"])).into_owned();
    assert!(
        checked.contains("3 blocks read back and verified"),
        "{checked}"
    );
    t.run(&["tenant", "gc", &name]);

    // Lose one object: fsck --check-data names the problem and exits non-zero.
    let id = serde_json::from_slice::<serde_json::Value>(
        &t.run(&["tenant", "info", &name, "--output", "json"]),
    )
    .expect("json")["id"]
        .to_string();
    let shard = std::fs::read_dir(dir.path().join(&id))
        .expect("tenant directory")
        .flatten()
        .next()
        .expect("a shard directory");
    let object = std::fs::read_dir(shard.path())
        .expect("shard")
        .flatten()
        .next()
        .expect("an object");
    std::fs::remove_file(object.path()).expect("remove object");
    let out = t.output(&mut t.command(&["fsck", "-t", &name, "--check-data"]));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("missing from the data store"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let out = t.output(&mut t.command(&["tenant", "create", "x-bad", "--data", "ftp://host/x"]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--data") && err.contains("ftp"), "{err}");
    t.run(&["tenant", "delete", &name]);
}
