//! Hostile input: arbitrary bytes fed to every parser and name check a user or a pod reaches
//! (entry names, `/.tarbox` command writes, access policies, audit filters, data-store URLs).
//! Each ends in the errno or error Linux users expect, never a panic, and an error changes
//! nothing. Name and control-file properties run against the memory backend and PostgreSQL.

use std::str::FromStr;

use proptest::prelude::*;
use proptest::test_runner::Config;
use tarbox_fs::Filesystem as _;
use tarbox_fs::audit::{PathMatch, ResultFilter, StatsKey};
use tarbox_fs::policy::AccessPolicy;
use tarbox_fs::{AuditOp, Caller, ControlFs, FsResult, Ino};
use tarbox_tests::{TestVolume, read_dir_as};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Names as an attacker would pick them: any bytes, and the edge cases among them.
fn hostile_name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..300),
        1 => Just(Vec::new()),
        1 => Just(b".".to_vec()),
        1 => Just(b"..".to_vec()),
        1 => Just(b".tarbox".to_vec()),
        1 => Just(vec![b'n'; 255]),
        1 => Just(vec![b'n'; 256]),
        1 => Just(b"a/b".to_vec()),
        1 => Just(b"a\0b".to_vec()),
        1 => Just(vec![0xff, 0xfe, 0x80, b'\n', b'\\']),
    ]
}

/// The errno making `name` in the root the way `how` says must fail with, or 0 if it must
/// succeed: `mkdir`, `mknod`, `symlink`, `create(O_EXCL)`, `rename` onto it.
fn expected_errno(name: &[u8], how: u8) -> i32 {
    let rename = how == 4;
    if name.len() > 255 {
        libc::ENAMETOOLONG
    } else if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        libc::EINVAL
    } else if name == b"." || name == b".." {
        if rename { libc::EINVAL } else { libc::EEXIST }
    } else if name == b".tarbox" {
        // The mount's control directory is there: as any existing directory would say.
        match how {
            3 => libc::EISDIR,
            4 => libc::EBUSY,
            _ => libc::EEXIST,
        }
    } else {
        0
    }
}

fn errno<T>(r: &FsResult<T>) -> i32 {
    r.as_ref().err().map_or(0, |e| e.errno())
}

/// The root's names, sorted.
async fn root_names(fs: &dyn tarbox_fs::Filesystem) -> Vec<Vec<u8>> {
    let entries = read_dir_as(fs, &Caller::root(), Ino::ROOT).await;
    let mut names: Vec<Vec<u8>> = entries
        .into_iter()
        .map(|e| e.name)
        .filter(|n| n != b"." && n != b"..")
        .collect();
    names.sort();
    names
}

/// Creating `name` by any of the ways a name is made either succeeds (and lists, looks up and
/// removes as that exact name) or fails with the errno of its class and leaves the root as it was.
fn names_with_every_byte(url: Option<&str>, cases: u32) {
    let rt = runtime();
    let t = rt.block_on(TestVolume::open(url.unwrap_or("memory://")));
    let fs = ControlFs::new(t.volume.clone());
    let before = rt.block_on(root_names(&fs));
    proptest!(config(cases), |(name in hostile_name(), how in 0u8..5)| {
        rt.block_on(async {
            let me = Caller::root();
            let made = match how {
                0 => fs.mkdir(&me, Ino::ROOT, &name, 0o755).await.map(|a| a.ino),
                1 => fs.mknod(&me, Ino::ROOT, &name, libc::S_IFREG | 0o644, 0).await.map(|a| a.ino),
                2 => fs.symlink(&me, Ino::ROOT, &name, b"target").await.map(|a| a.ino),
                3 => match fs.create(&me, Ino::ROOT, &name, 0o644, libc::O_WRONLY | libc::O_EXCL).await {
                    Ok((attr, fh)) => fs.release(&me, fh).await.map(|()| attr.ino),
                    Err(e) => Err(e),
                },
                _ => {
                    let file = fs.mknod(&me, Ino::ROOT, b"source", libc::S_IFREG | 0o644, 0).await.expect("source");
                    let r = fs.rename(&me, Ino::ROOT, b"source", Ino::ROOT, &name, Default::default()).await.map(|()| file.ino);
                    if r.is_err() {
                        fs.unlink(&me, Ino::ROOT, b"source").await.expect("unlink source");
                    }
                    r
                }
            };
            // A lookup of the name is refused the same way, or finds what was made.
            let want = expected_errno(&name, how);
            let looked = fs.lookup(&me, Ino::ROOT, &name).await;
            match &made {
                Err(e) => {
                    prop_assert_eq!(e.errno(), want, "{:?} ({})", name, e);
                    prop_assert_eq!(root_names(&fs).await, before.clone());
                    // A name no entry can have is refused by lookup too (dots name directories).
                    let malformed = expected_errno(&name, 0);
                    if malformed == libc::ENAMETOOLONG || malformed == libc::EINVAL {
                        prop_assert_eq!(errno(&looked), malformed);
                    }
                }
                Ok(ino) => {
                    prop_assert_eq!(want, 0, "{:?} was accepted", name);
                    prop_assert_eq!(looked.as_ref().map(|a| a.ino).ok(), Some(*ino));
                    let mut listed = before.clone();
                    listed.push(name.clone());
                    listed.sort();
                    prop_assert_eq!(root_names(&fs).await, listed);
                    let removed = if how == 0 {
                        fs.rmdir(&me, Ino::ROOT, &name).await
                    } else {
                        fs.unlink(&me, Ino::ROOT, &name).await
                    };
                    prop_assert!(removed.is_ok(), "{:?}", removed);
                    prop_assert_eq!(root_names(&fs).await, before.clone());
                }
            }
            Ok(())
        })?;
    });
    rt.block_on(t.cleanup_handle().run());
}

/// What a `/.tarbox/layers` command file is written with, by someone who means harm.
fn hostile_command() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..300),
        2 => "[ -~]{0,40}".prop_map(String::into_bytes),
        1 => "\\{\"name\":\"[ -~]{0,20}\"(,\"force\":(true|false|1))?\\}".prop_map(String::into_bytes),
        1 => Just(b"{\"name\":".to_vec()),
        1 => Just(vec![b'x'; 10_000]),
        1 => Just(b"cp-0\n".to_vec()),
    ]
}

/// A command written to `layers/new`, `switch` or `drop` either runs or fails with a clean errno;
/// the live tree's files are unchanged either way (every layer here shows the same tree).
fn control_writes_with_any_bytes(url: Option<&str>, cases: u32) {
    let rt = runtime();
    let t = rt.block_on(TestVolume::open(url.unwrap_or("memory://")));
    let fs = ControlFs::new(t.volume.clone());
    let me = Caller::root();
    let (layers, before) = rt.block_on(async {
        let (_, fh) = fs
            .create(&me, Ino::ROOT, b"keep", 0o644, libc::O_WRONLY)
            .await
            .expect("create");
        fs.write(&me, fh, 0, b"kept").await.expect("write");
        fs.release(&me, fh).await.expect("release");
        t.volume
            .layers()
            .checkpoint("cp-0", "")
            .await
            .expect("checkpoint");
        let control = fs
            .lookup(&me, Ino::ROOT, b".tarbox")
            .await
            .expect(".tarbox")
            .ino;
        let layers = fs
            .lookup(&me, control, b"layers")
            .await
            .expect("layers")
            .ino;
        (layers, root_names(&fs).await)
    });
    let allowed = [
        libc::EINVAL,
        libc::ENOENT,
        libc::EEXIST,
        libc::EBUSY,
        libc::ENAMETOOLONG,
    ];
    proptest!(config(cases), |(data in hostile_command(), file in 0usize..3)| {
        rt.block_on(async {
            let name: &[u8] = [&b"new"[..], b"switch", b"drop"][file];
            let node = fs.lookup(&me, layers, name).await.expect("command file").ino;
            let fh = fs.open(&me, node, libc::O_WRONLY).await.expect("open command");
            let written = fs.write(&me, fh, 0, &data).await;
            fs.release(&me, fh).await.expect("release");
            if let Err(e) = &written {
                prop_assert!(allowed.contains(&e.errno()), "{}: {:?} -> {}", String::from_utf8_lossy(name), String::from_utf8_lossy(&data), e);
            }
            prop_assert_eq!(root_names(&fs).await, before.clone());
            let keep = fs.lookup(&me, Ino::ROOT, b"keep").await.expect("keep").ino;
            let fh = fs.open(&me, keep, libc::O_RDONLY).await.expect("open keep");
            let content = fs.read(&me, fh, 0, 64).await.expect("read keep");
            fs.release(&me, fh).await.expect("release");
            prop_assert_eq!(&content[..], b"kept");
            Ok(())
        })?;
    });
    rt.block_on(t.cleanup_handle().run());
}

/// TOML-shaped text around the policy's own keys, so the parser's deeper checks are reached.
fn policy_text() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        "\"[ -~]{0,12}\"",
        "[0-9]{1,6}",
        Just("[\"/a\", \"/b/*\"]".to_string()),
        Just("\"/x/{pod}/**\"".to_string()),
        Just("true".to_string()),
    ];
    let key = prop_oneof![
        Just("name"),
        Just("namespace"),
        Just("service_account"),
        Just("pod"),
        Just("paths"),
        Just("access"),
        Just("squash"),
        Just("uid"),
        Just("gid"),
        Just("pods"),
        Just("no_pod"),
    ];
    let line = prop_oneof![
        (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        Just("[[rules]]".to_string()),
        Just("[defaults]".to_string()),
        Just("access = \"read\"".to_string()),
        Just("paths = [\"/data\"]".to_string()),
        "[ -~]{0,30}",
    ];
    prop::collection::vec(line, 0..16).prop_map(|lines| lines.join("\n"))
}

proptest! {
    #![proptest_config(config(2_000))]

    /// A policy from any text is accepted or refused with a line inside the text.
    #[test]
    fn policies_from_any_text(text in prop_oneof![policy_text(), ".{0,200}"]) {
        if let Err(e) = AccessPolicy::parse(&text) {
            prop_assert!(e.line <= text.lines().count() + 1, "{} for {:?}", e, text);
            prop_assert!(!e.reason.is_empty());
        }
    }

    /// Audit query filters and data-store URLs from any text: a value or a message, no panic.
    #[test]
    fn filters_and_urls_from_any_text(text in ".{0,80}") {
        let _ = PathMatch::parse(&text);
        if let Err(e) = ResultFilter::from_str(&text) {
            prop_assert!(!e.is_empty());
        }
        if let Err(e) = StatsKey::from_str(&text) {
            prop_assert!(!e.is_empty());
        }
        if let Err(e) = AuditOp::from_str(&text) {
            prop_assert!(e.contains("unknown operation"));
        }
        let _ = tarbox_fs::store::validate_data_url(&text);
        let _ = tarbox_fs::store::validate_data_url(&format!("s3://{text}"));
        let _ = tarbox_fs::store::validate_data_url(&format!("file://{text}"));
    }
}

mod memory {
    #[test]
    fn names_with_every_byte() {
        super::names_with_every_byte(None, 512);
    }

    #[test]
    fn control_writes_with_any_bytes() {
        super::control_writes_with_any_bytes(None, 256);
    }
}

mod postgres {
    fn url() -> Option<String> {
        super::runtime().block_on(tarbox_tests::postgres_url())
    }

    #[test]
    fn names_with_every_byte() {
        if let Some(url) = url() {
            super::names_with_every_byte(Some(&url), 96);
        }
    }

    #[test]
    fn control_writes_with_any_bytes() {
        if let Some(url) = url() {
            super::control_writes_with_any_bytes(Some(&url), 48);
        }
    }
}
