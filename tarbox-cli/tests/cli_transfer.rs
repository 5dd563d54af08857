//! Export and import of the real `tarbox` binary against PostgreSQL (tar archives, local
//! directories, checkpoints), asserting what a user sees: bytes, listings, `stat` output, exit
//! codes and messages. PostgreSQL is found as in `cli_fs.rs`.

mod common;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value;

use common::{Tenant, noise};

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
