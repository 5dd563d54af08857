//! Native mounts: host directories inside a tenant's tree. `rw` passes changes to the host, `ro`
//! refuses each one with `EROFS`, mount points behave like mounts, nothing crosses the boundary
//! (`EXDEV`), and no name, symlink, swap or link reaches outside the source directory. Audit
//! events and the access policy see native paths as paths of the tree. Every test runs against
//! every backend (the definitions live in it).

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use tarbox_fs::Filesystem as _;
use tarbox_fs::audit::AuditFilter;
use tarbox_fs::native::{NativeMode, NativeMount};
use tarbox_fs::{
    AuditLevel, AuditOp, Caller, FileType, Ino, LayerRef, RenameFlags, SetAttr, Volume,
    VolumeOptions, XattrMode,
};
use tarbox_tests::{TestVolume, assert_errno, backend_tests, names_as};

fn def(path: &str, source: &Path, mode: NativeMode) -> NativeMount {
    NativeMount {
        path: path.into(),
        source: source.display().to_string(),
        mode,
        shared: false,
    }
}

/// A volume of `t`'s tenant with `mounts` added to its own native mounts and put in force.
async fn with_mounts(t: &TestVolume, mounts: &[NativeMount]) -> Volume {
    t.engine
        .add_native_mounts(Some(&t.tenant), mounts)
        .await
        .expect("add native mounts");
    open_native(t).await
}

async fn open_native(t: &TestVolume) -> Volume {
    let options = VolumeOptions {
        native_mounts: Some(Vec::new()),
        audit_level: Some(AuditLevel::Full),
        ..VolumeOptions::default()
    };
    t.engine
        .volume_with(&t.tenant, options)
        .await
        .expect("volume with native mounts")
}

/// `path` looked up from the root as `caller`.
async fn resolve_as(
    v: &Volume,
    caller: &Caller,
    path: &str,
) -> tarbox_fs::FsResult<tarbox_fs::FileAttr> {
    let mut attr = v.getattr(caller, Ino::ROOT).await?;
    for name in path.split('/').filter(|n| !n.is_empty()) {
        attr = v.lookup(caller, attr.ino, name.as_bytes()).await?;
    }
    Ok(attr)
}

async fn ino(v: &Volume, path: &str) -> Ino {
    resolve_as(v, &Caller::root(), path)
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .ino
}

async fn write(v: &Volume, dir: &str, name: &str, data: &[u8]) -> Ino {
    let me = Caller::root();
    let parent = ino(v, dir).await;
    let (attr, fh) = v
        .create(&me, parent, name.as_bytes(), 0o644, libc::O_WRONLY)
        .await
        .unwrap_or_else(|e| panic!("create {dir}/{name}: {e}"));
    v.write(&me, fh, 0, data).await.expect("write");
    v.release(&me, fh).await.expect("release");
    attr.ino
}

async fn read(v: &Volume, path: &str) -> tarbox_fs::FsResult<Vec<u8>> {
    let me = Caller::root();
    let attr = resolve_as(v, &me, path).await?;
    let fh = v.open(&me, attr.ino, libc::O_RDONLY).await?;
    let data = v.read(&me, fh, 0, 1 << 20).await;
    v.release(&me, fh).await?;
    Ok(data?.to_vec())
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    // `/proc/self` belongs to the process's effective uid.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

backend_tests! {
    async fn rw_mount_makes_changes_in_the_host_directory(t: TestVolume) {
        let src = tempfile::tempdir().expect("source");
        std::fs::write(src.path().join("from-host"), b"host data").expect("host file");
        let v = with_mounts(&t, &[def("/work", src.path(), NativeMode::Rw)]).await;
        let me = Caller::root();

        // The host's file is there; the tree's root lists the mount point.
        assert_eq!(read(&v, "/work/from-host").await.expect("read"), b"host data");
        assert!(names_as(&v, &me, Ino::ROOT).await.contains(&"work".to_string()));

        // Changes through the volume land on the host.
        write(&v, "/work", "a.txt", b"written through tarbox").await;
        assert_eq!(std::fs::read(src.path().join("a.txt")).expect("host"), b"written through tarbox");
        let work = ino(&v, "/work").await;
        let sub = v.mkdir(&me, work, b"sub", 0o777).await.expect("mkdir");
        assert_eq!(sub.kind, FileType::Directory);
        let host_mode = std::fs::metadata(src.path().join("sub")).expect("host dir").mode();
        assert_eq!(host_mode & 0o7777, 0o777, "the mode asked for, not the daemon's umask");
        let a = ino(&v, "/work/a.txt").await;
        v.rename(&me, work, b"a.txt", sub.ino, b"b.txt", RenameFlags::default())
            .await
            .expect("rename within the mount");
        assert!(src.path().join("sub/b.txt").exists());
        assert_eq!(ino(&v, "/work/sub/b.txt").await, a, "a rename keeps the inode number");
        // What is below a renamed directory is reached through its old node still.
        v.rename(&me, work, b"sub", work, b"sub2", RenameFlags::default()).await.expect("rename dir");
        assert_eq!(v.getattr(&me, a).await.expect("below a renamed directory").size, 22);
        v.rename(&me, work, b"sub2", work, b"sub", RenameFlags::default()).await.expect("rename back");
        v.symlink(&me, work, b"link", b"sub/b.txt").await.expect("symlink");
        assert_eq!(
            std::fs::read_link(src.path().join("link")).expect("host link"),
            Path::new("sub/b.txt")
        );
        let b = ino(&v, "/work/sub/b.txt").await;
        v.link(&me, b, work, b"hard").await.expect("hard link within the mount");
        assert_eq!(std::fs::metadata(src.path().join("hard")).expect("hard").nlink(), 2);
        let attr = v
            .setattr(&me, b, &SetAttr { mode: Some(0o600), size: Some(3), ..SetAttr::default() })
            .await
            .expect("chmod and truncate");
        assert_eq!((attr.perm, attr.size), (0o600, 3));
        assert_eq!(std::fs::read(src.path().join("hard")).expect("host"), b"wri");
        v.setxattr(&me, b, b"user.note", b"kept", XattrMode::Any).await.expect("setxattr");
        assert_eq!(v.getxattr(&me, b, b"user.note").await.expect("getxattr"), b"kept");
        assert_errno!(
            v.setxattr(&me, b, b"trusted.x", b"1", XattrMode::Any).await,
            libc::EPERM
        );
        v.unlink(&me, work, b"hard").await.expect("unlink");
        assert!(!src.path().join("hard").exists());
        assert_errno!(v.rmdir(&me, work, b"sub").await, libc::ENOTEMPTY);

        // A file unlinked while open lives on through its handle.
        let (tmp, fh) = v.create(&me, work, b"tmp", 0o600, libc::O_RDWR).await.expect("create");
        v.unlink(&me, work, b"tmp").await.expect("unlink while open");
        v.write(&me, fh, 0, b"still here").await.expect("write after unlink");
        assert_eq!(v.getattr(&me, tmp.ino).await.expect("fstat after unlink").size, 10);
        assert_eq!(&v.read(&me, fh, 0, 64).await.expect("read after unlink")[..], b"still here");
        v.release(&me, fh).await.expect("release");

        // A change made on the host shows at the next lookup.
        std::fs::write(src.path().join("late"), b"late").expect("host write");
        assert_eq!(read(&v, "/work/late").await.expect("late"), b"late");
        let mut names = names_as(&v, &me, work).await;
        names.sort();
        assert_eq!(names, ["from-host", "late", "link", "sub"]);
    }

    async fn ro_mount_refuses_every_change_with_erofs(t: TestVolume) {
        let src = tempfile::tempdir().expect("source");
        std::fs::create_dir(src.path().join("d")).expect("host dir");
        std::fs::write(src.path().join("f"), b"0123456789").expect("host file");
        std::fs::write(src.path().join("su"), b"#!/bin/sh\n").expect("host program");
        std::fs::set_permissions(src.path().join("su"), std::os::unix::fs::PermissionsExt::from_mode(0o4755)).expect("chmod");
        let v = with_mounts(&t, &[def("/usr", src.path(), NativeMode::Ro)]).await;
        let su = resolve_as(&v, &Caller::root(), "/usr/su").await.expect("su");
        assert_eq!(su.perm, 0o755, "no set-user-ID program of the host grants anything");
        let me = Caller::root();
        let usr = ino(&v, "/usr").await;
        let f = ino(&v, "/usr/f").await;
        // The tree beside it still takes changes.
        write(&v, "/", "tree-file", b"x").await;

        assert_errno!(v.mkdir(&me, usr, b"new", 0o755).await, libc::EROFS);
        assert_errno!(v.create(&me, usr, b"new", 0o644, libc::O_WRONLY).await, libc::EROFS);
        assert_errno!(v.mknod(&me, usr, b"fifo", libc::S_IFIFO | 0o644, 0).await, libc::EROFS);
        assert_errno!(v.symlink(&me, usr, b"l", b"f").await, libc::EROFS);
        assert_errno!(v.link(&me, f, usr, b"f2").await, libc::EROFS);
        assert_errno!(v.unlink(&me, usr, b"f").await, libc::EROFS);
        assert_errno!(v.rmdir(&me, usr, b"d").await, libc::EROFS);
        assert_errno!(
            v.rename(&me, usr, b"f", usr, b"g", RenameFlags::default()).await,
            libc::EROFS
        );
        assert_errno!(
            v.setattr(&me, f, &SetAttr { mode: Some(0o600), ..SetAttr::default() }).await,
            libc::EROFS
        );
        assert_errno!(
            v.setattr(&me, f, &SetAttr { size: Some(0), ..SetAttr::default() }).await,
            libc::EROFS
        );
        assert_errno!(v.open(&me, f, libc::O_WRONLY).await, libc::EROFS);
        assert_errno!(v.open(&me, f, libc::O_RDONLY | libc::O_TRUNC).await, libc::EROFS);
        assert_errno!(v.setxattr(&me, f, b"user.x", b"1", XattrMode::Any).await, libc::EROFS);
        assert_errno!(v.removexattr(&me, f, b"user.x").await, libc::EROFS);
        assert_errno!(v.access(&me, f, libc::W_OK as u32).await, libc::EROFS);
        // Reads work, and the host is untouched.
        assert_eq!(read(&v, "/usr/f").await.expect("read"), b"0123456789");
        v.access(&me, f, libc::R_OK as u32).await.expect("access(R_OK)");
        assert_eq!(std::fs::read(src.path().join("f")).expect("host"), b"0123456789");
    }

    async fn mount_points_hide_the_tree_and_cannot_be_moved(t: TestVolume) {
        // The tree has its own /work before the mount hides it.
        t.mkdir_p("/work/sub").await;
        t.write_file("/work/tree-only", b"tree").await;
        t.mkdir_p("/data").await;
        let tree_work = t.ino("/work").await;
        let src = tempfile::tempdir().expect("source");
        std::fs::write(src.path().join("host-only"), b"host").expect("host file");
        let v = with_mounts(&t, &[
            def("/work", src.path(), NativeMode::Rw),
            def("/data/deep/native", src.path(), NativeMode::Ro),
        ]).await;
        let me = Caller::root();

        let work = resolve_as(&v, &me, "/work").await.expect("mount point");
        assert_ne!(work.ino, tree_work, "the mount point is the host directory");
        assert!(work.ino.0 >= 1 << 40, "native inode numbers stay clear of the tree's");
        assert_eq!(names_as(&v, &me, work.ino).await, ["host-only"]);
        let root_names = names_as(&v, &me, Ino::ROOT).await;
        assert_eq!(root_names.iter().filter(|n| *n == "work").count(), 1, "{root_names:?}");

        // Missing directories above a mount point are made.
        let deep = ino(&v, "/data/deep").await;
        assert_eq!(names_as(&v, &me, deep).await, ["native"]);
        // A file of the tenant's in the way leaves that mount out, not the volume.
        t.write_file("/blocked", b"a file").await;
        let blocked = def("/blocked/native", src.path(), NativeMode::Ro);
        let v2 = with_mounts(&t, &[blocked]).await;
        assert_eq!(
            read(&v2, "/blocked").await.expect("the tenant's file"),
            b"a file"
        );
        assert!(resolve_as(&v2, &me, "/work/host-only").await.is_ok());

        assert_errno!(v.rmdir(&me, Ino::ROOT, b"work").await, libc::EBUSY);
        assert_errno!(v.unlink(&me, Ino::ROOT, b"work").await, libc::EISDIR);
        assert_errno!(v.mkdir(&me, Ino::ROOT, b"work", 0o755).await, libc::EEXIST);
        assert_errno!(
            v.rename(&me, Ino::ROOT, b"work", Ino::ROOT, b"elsewhere", RenameFlags::default()).await,
            libc::EBUSY
        );
        let data = ino(&v, "/data").await;
        assert_errno!(v.rmdir(&me, data, b"deep").await, libc::EBUSY);
        v.mkdir(&me, Ino::ROOT, b"empty", 0o755).await.expect("mkdir");
        assert_errno!(
            v.rename(&me, Ino::ROOT, b"empty", data, b"deep", RenameFlags::default()).await,
            libc::EBUSY
        );

        // Without native mounts (an administrative view) the tree's own /work is there again.
        assert_eq!(t.ls("/work").await, ["sub", "tree-only"]);
    }

    async fn nothing_crosses_the_boundary(t: TestVolume) {
        let src = tempfile::tempdir().expect("source");
        let other = tempfile::tempdir().expect("second source");
        std::fs::write(src.path().join("native-file"), b"n").expect("host file");
        let v = with_mounts(&t, &[
            def("/a", src.path(), NativeMode::Rw),
            def("/b", other.path(), NativeMode::Rw),
        ]).await;
        let me = Caller::root();
        let tree_file = write(&v, "/", "tree-file", b"t").await;
        let a = ino(&v, "/a").await;
        let b = ino(&v, "/b").await;
        let native_file = ino(&v, "/a/native-file").await;
        let plain = RenameFlags::default();

        assert_errno!(v.rename(&me, Ino::ROOT, b"tree-file", a, b"x", plain).await, libc::EXDEV);
        assert_errno!(v.rename(&me, a, b"native-file", Ino::ROOT, b"x", plain).await, libc::EXDEV);
        assert_errno!(v.rename(&me, a, b"native-file", b, b"x", plain).await, libc::EXDEV);
        assert_errno!(v.link(&me, tree_file, a, b"x").await, libc::EXDEV);
        assert_errno!(v.link(&me, native_file, Ino::ROOT, b"x").await, libc::EXDEV);
        assert_errno!(v.link(&me, native_file, b, b"x").await, libc::EXDEV);
        // Nothing moved.
        assert_eq!(std::fs::read_dir(other.path()).expect("ls").count(), 0);
        assert!(src.path().join("native-file").exists());
        assert_eq!(read(&v, "/tree-file").await.expect("tree file"), b"t");
    }

    async fn symlinks_and_names_never_lead_outside(t: TestVolume) {
        let base = tempfile::tempdir().expect("base");
        let src = base.path().join("src");
        let outside = base.path().join("outside");
        std::fs::create_dir(&src).expect("src");
        std::fs::create_dir(&outside).expect("outside");
        std::fs::write(outside.join("secret"), b"secret").expect("secret");
        std::os::unix::fs::symlink(outside.join("secret"), src.join("abs")).expect("abs link");
        std::os::unix::fs::symlink("../outside/secret", src.join("rel")).expect("rel link");
        std::os::unix::fs::symlink("../outside", src.join("dirlink")).expect("dir link");
        let v = with_mounts(&t, &[def("/w", &src, NativeMode::Rw)]).await;
        let me = Caller::root();
        let w = ino(&v, "/w").await;

        for link in ["abs", "rel"] {
            let attr = resolve_as(&v, &me, &format!("/w/{link}")).await.expect("lookup");
            assert_eq!(attr.kind, FileType::Symlink, "{link} is shown as the symlink it is");
            assert_errno!(v.open(&me, attr.ino, libc::O_RDWR).await, libc::EACCES);
            assert_errno!(
                v.setattr(&me, attr.ino, &SetAttr { size: Some(0), ..SetAttr::default() }).await,
                libc::EINVAL
            );
            assert_errno!(
                v.setattr(&me, attr.ino, &SetAttr { mode: Some(0o777), uid: Some(1000), ..SetAttr::default() }).await,
                libc::EOPNOTSUPP
            );
            assert_errno!(v.setxattr(&me, attr.ino, b"user.x", b"1", XattrMode::Any).await, libc::EPERM);
        }
        // A symlink to a directory is not a directory to walk through.
        assert_errno!(resolve_as(&v, &me, "/w/dirlink/secret").await, libc::ENOTDIR);
        // Names that are not one component are refused.
        for name in [&b".."[..], b".", b"a/b", b"../outside"] {
            assert_errno!(v.lookup(&me, w, name).await, libc::EINVAL);
            assert_errno!(v.create(&me, w, name, 0o644, libc::O_WRONLY).await, libc::EINVAL);
        }
        // Device nodes are refused; a fifo is fine.
        assert_errno!(v.mknod(&me, w, b"disk", libc::S_IFBLK | 0o600, 0x0801).await, libc::EPERM);
        assert_errno!(v.mknod(&me, w, b"tty", libc::S_IFCHR | 0o600, 0x0501).await, libc::EPERM);
        v.mknod(&me, w, b"fifo", libc::S_IFIFO | 0o600, 0).await.expect("fifo");

        // A directory swapped for a symlink after it was looked up is not followed.
        std::fs::create_dir(src.join("d")).expect("d");
        std::fs::write(src.join("d/secret"), b"inside").expect("d/secret");
        let d = ino(&v, "/w/d").await;
        let inner = ino(&v, "/w/d/secret").await;
        std::fs::rename(src.join("d"), base.path().join("moved-away")).expect("move d out");
        std::os::unix::fs::symlink(&outside, src.join("d")).expect("swap in a symlink");
        assert!(v.lookup(&me, d, b"secret").await.is_err(), "lookup through a swapped dir");
        assert!(v.getattr(&me, inner).await.is_err(), "a node below a swapped dir");
        assert!(v.open(&me, inner, libc::O_RDWR | libc::O_TRUNC).await.is_err());

        assert_eq!(std::fs::read(outside.join("secret")).expect("secret"), b"secret");
        let mode = std::fs::metadata(outside.join("secret")).expect("secret").mode();
        assert_ne!(mode & 0o777, 0o777, "never chmodded");
    }

    async fn bad_definitions_are_refused_by_name(t: TestVolume) {
        let src = tempfile::tempdir().expect("source");
        let ok = def("/ok", src.path(), NativeMode::Ro);
        let cases = [
            (NativeMount { source: "relative/dir".into(), ..ok.clone() }, "must be absolute"),
            (NativeMount { path: "/.tarbox/x".into(), ..ok.clone() }, "/.tarbox"),
            (NativeMount { source: "/srv/{user}".into(), ..ok.clone() }, "{user}"),
            (NativeMount { mode: NativeMode::Cow, ..ok.clone() }, "cow"),
        ];
        for (mount, expected) in cases {
            let err = t.engine.add_native_mounts(Some(&t.tenant), std::slice::from_ref(&mount)).await.expect_err("refused");
            assert_eq!(err.errno(), libc::EINVAL);
            assert!(err.to_string().contains(expected), "{err} lacks {expected:?}");
        }
        t.engine.add_native_mounts(Some(&t.tenant), std::slice::from_ref(&ok)).await.expect("add");
        let nested = NativeMount { path: "/ok/inner".into(), ..ok.clone() };
        let err = t.engine.add_native_mounts(Some(&t.tenant), &[nested]).await.expect_err("refused");
        assert!(err.to_string().contains("overlap"), "{err}");

        // A source whose path passes through a symlink is refused when the volume opens.
        let real = src.path().join("real");
        std::fs::create_dir(&real).expect("real");
        std::os::unix::fs::symlink(&real, src.path().join("link")).expect("link");
        let linked = def("/linked", &src.path().join("link"), NativeMode::Ro);
        t.engine.add_native_mounts(Some(&t.tenant), &[linked]).await.expect("add");
        let options = VolumeOptions { native_mounts: Some(Vec::new()), ..VolumeOptions::default() };
        let err = t.engine.volume_with(&t.tenant, options).await.expect_err("refused");
        assert!(err.to_string().contains("symlink"), "{err}");
        t.engine.remove_native_mount(Some(&t.tenant), "/linked", false).await.expect("remove");

        // A source missing when a volume opens fails the volume, naming it.
        let gone = src.path().join("gone");
        let missing = def("/missing", &gone, NativeMode::Ro);
        t.engine.add_native_mounts(Some(&t.tenant), &[missing]).await.expect("add");
        let options = VolumeOptions { native_mounts: Some(Vec::new()), ..VolumeOptions::default() };
        let err = t.engine.volume_with(&t.tenant, options).await.expect_err("refused");
        assert!(err.to_string().contains(&gone.display().to_string()), "{err}");
        t.engine.remove_native_mount(Some(&t.tenant), "/missing", false).await.expect("remove");
        assert_errno!(t.engine.remove_native_mount(Some(&t.tenant), "/missing", false).await, libc::ENOENT);
        assert_eq!(t.engine.native_mounts(Some(&t.tenant)).await.expect("list"), [ok]);
    }

    async fn per_tenant_sources_are_made_and_audited_by_tree_path(t: TestVolume) {
        let base = tempfile::tempdir().expect("base");
        let mount = NativeMount {
            path: "/.venv".into(),
            source: format!("{}/venvs/{{tenant}}", base.path().display()),
            mode: NativeMode::Rw,
            shared: false,
        };
        let v = with_mounts(&t, &[mount]).await;
        write(&v, "/.venv", "pyvenv.cfg", b"home = /usr/bin\n").await;
        let own = base.path().join("venvs").join(&t.tenant);
        let host = own.join("pyvenv.cfg");
        assert_eq!(std::fs::read(&host).expect("made under the tenant's own source"), b"home = /usr/bin\n");
        let mode = std::fs::metadata(&own).expect("own source").mode();
        assert_eq!(mode & 0o7777, 0o1777, "writable by the tenant's programs, as a volume's root");

        t.engine.flush_audit().await;
        let filter = AuditFilter { tenant: Some(t.tenant.clone()), ..AuditFilter::default() };
        let events = t.engine.audit_query(&filter).await.expect("audit");
        let created: Vec<_> = events
            .iter()
            .filter(|e| e.op == AuditOp::Create)
            .map(|e| e.path.as_deref().unwrap_or_default().to_string())
            .collect();
        assert_eq!(created, ["/.venv/pyvenv.cfg"]);
        let wrote: u64 = events.iter().filter(|e| e.op == AuditOp::Write).map(|e| e.bytes).sum();
        assert_eq!(wrote, 16);

        // A directory left by another tenant of the same name is not handed over.
        if running_as_root() {
            let marked = std::process::Command::new("python3")
                .args(["-c", "import os, sys; os.setxattr(sys.argv[1], 'trusted.tarbox.owner', b'tenant id 999999')"])
                .arg(&own)
                .status()
                .expect("python3");
            assert!(marked.success());
            let options = VolumeOptions { native_mounts: Some(Vec::new()), ..VolumeOptions::default() };
            let err = t.engine.volume_with(&t.tenant, options).await.expect_err("refused");
            assert!(err.to_string().contains("another tenant"), "{err}");
        }
    }

    async fn host_permissions_apply_to_the_caller(t: TestVolume) {
        if !running_as_root() {
            // Without root the engine cannot act as anyone but itself: nothing to test here,
            // which CI (root) must not accept.
            assert!(std::env::var("CI").is_err(), "CI runs the native permission tests as root");
            return;
        }
        let src = tempfile::tempdir().expect("source");
        std::fs::set_permissions(src.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        std::fs::create_dir(src.path().join("open")).expect("open dir");
        std::fs::set_permissions(src.path().join("open"), std::os::unix::fs::PermissionsExt::from_mode(0o777)).expect("chmod");
        std::fs::write(src.path().join("roots"), b"root's").expect("root file");
        std::fs::set_permissions(src.path().join("roots"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
        let v = with_mounts(&t, &[def("/w", src.path(), NativeMode::Rw)]).await;
        let alice = tarbox_tests::alice();
        let w = resolve_as(&v, &alice, "/w").await.expect("alice looks up /w");
        let open = resolve_as(&v, &alice, "/w/open").await.expect("alice looks up /w/open");

        assert_errno!(v.create(&alice, w.ino, b"mine", 0o644, libc::O_WRONLY).await, libc::EACCES);
        let roots = resolve_as(&v, &alice, "/w/roots").await.expect("lookup");
        assert_errno!(v.open(&alice, roots.ino, libc::O_RDONLY).await, libc::EACCES);
        assert_errno!(v.setattr(&alice, roots.ino, &SetAttr { mode: Some(0o666), ..SetAttr::default() }).await, libc::EPERM);
        let (attr, fh) = v.create(&alice, open.ino, b"mine", 0o640, libc::O_WRONLY).await.expect("create in a 0777 dir");
        v.release(&alice, fh).await.expect("release");
        assert_eq!((attr.uid, attr.gid), (alice.uid, alice.gid));
        let meta = std::fs::metadata(src.path().join("open/mine")).expect("host file");
        assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o777), (alice.uid, alice.gid, 0o640));
        // A write as alice clears the set-user-ID bit of a file she may write, as on the host.
        std::fs::write(src.path().join("open/shared"), b"x").expect("shared");
        std::fs::set_permissions(src.path().join("open/shared"), std::os::unix::fs::PermissionsExt::from_mode(0o4777)).expect("chmod");
        let shared = resolve_as(&v, &alice, "/w/open/shared").await.expect("lookup");
        let fh = v.open(&alice, shared.ino, libc::O_WRONLY).await.expect("open");
        v.write(&alice, fh, 0, b"y").await.expect("write");
        v.release(&alice, fh).await.expect("release");
        let mode = std::fs::metadata(src.path().join("open/shared")).expect("meta").mode();
        assert_eq!(mode & 0o7777, 0o777, "set-user-ID cleared by alice's write");

        // Root still may, on the same thread afterwards: the identity was given back.
        assert_eq!(read(&v, "/w/roots").await.expect("root reads"), b"root's");
    }

    async fn time_travel_shows_no_native_mounts(t: TestVolume) {
        let src = tempfile::tempdir().expect("source");
        std::fs::write(src.path().join("f"), b"host").expect("host file");
        let v = with_mounts(&t, &[def("/w", src.path(), NativeMode::Rw)]).await;
        write(&v, "/", "tree-file", b"t").await;
        v.layers().checkpoint("cp", "").await.expect("checkpoint");
        let options = VolumeOptions {
            native_mounts: Some(Vec::new()),
            layer: Some(LayerRef::from("cp")),
            ..VolumeOptions::default()
        };
        let past = t.engine.volume_with(&t.tenant, options).await.expect("time travel");
        let names = names_as(&past, &Caller::root(), Ino::ROOT).await;
        assert!(names.contains(&"tree-file".to_string()) && !names.contains(&"w".to_string()), "{names:?}");
    }
}

/// Shared definitions: every tenant sees them, each keeps its own beside them, and a tenant's
/// own are removed with it while the shared stay. (Memory only: shared definitions are global
/// to a store, and other tests share the PostgreSQL one.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_mounts_reach_every_tenant() {
    let t = TestVolume::memory().await;
    let other = t.new_tenant(tarbox_fs::TenantOptions::default()).await;
    let shared_src = tempfile::tempdir().expect("shared");
    let own_src = tempfile::tempdir().expect("own");
    std::fs::write(shared_src.path().join("tool"), b"#!/bin/sh\n").expect("tool");
    let shared = NativeMount {
        shared: true,
        ..def("/opt/tools", shared_src.path(), NativeMode::Ro)
    };
    t.engine
        .add_native_mounts(None, std::slice::from_ref(&shared))
        .await
        .expect("add shared");
    let own = def("/mine", own_src.path(), NativeMode::Rw);
    t.engine
        .add_native_mounts(Some(&t.tenant), std::slice::from_ref(&own))
        .await
        .expect("add own");
    assert!(
        t.engine
            .add_native_mounts(None, std::slice::from_ref(&own))
            .await
            .is_err(),
        "a definition that is not shared needs a tenant"
    );

    let mine = open_native(&t).await;
    let theirs = open_native(&other).await;
    assert_eq!(
        read(&mine, "/opt/tools/tool").await.expect("shared"),
        b"#!/bin/sh\n"
    );
    assert_eq!(
        read(&theirs, "/opt/tools/tool").await.expect("shared"),
        b"#!/bin/sh\n"
    );
    assert!(resolve_as(&mine, &Caller::root(), "/mine").await.is_ok());
    assert_errno!(
        resolve_as(&theirs, &Caller::root(), "/mine").await,
        libc::ENOENT
    );
    assert_eq!(
        t.engine.native_mounts(Some(&t.tenant)).await.expect("list"),
        [shared.clone(), own]
    );

    t.engine
        .clear_native_mounts(&t.tenant)
        .await
        .expect("clear own");
    assert_eq!(
        t.engine.native_mounts(Some(&t.tenant)).await.expect("list"),
        [shared]
    );
    t.engine
        .remove_native_mount(None, "/opt/tools", true)
        .await
        .expect("remove shared");
    assert!(t.engine.native_mounts(None).await.expect("list").is_empty());
}
