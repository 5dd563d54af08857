//! Attributes and extended attributes: getattr, setattr (chmod, chown, truncate, utimes), ctime,
//! access, statfs, and get/set/list/removexattr with Linux's namespace rules.
//!
//! Expected results are those of Linux on ext4/tmpfs (checked with python3 as root and as an
//! unprivileged user).

use tarbox_fs::Filesystem as _;
use tarbox_fs::{
    Caller, FileType, Ino, Quota, RenameFlags, SetAttr, TenantOptions, TimeSet, Timestamp,
    XattrMode,
};
use tarbox_tests::{TestVolume, alice, assert_errno, backend_tests, bob, now, user};

fn chmod(mode: u32) -> SetAttr {
    SetAttr {
        mode: Some(mode),
        ..SetAttr::default()
    }
}

fn chown(uid: Option<u32>, gid: Option<u32>) -> SetAttr {
    SetAttr {
        uid,
        gid,
        ..SetAttr::default()
    }
}

fn times(atime: Option<TimeSet>, mtime: Option<TimeSet>) -> SetAttr {
    SetAttr {
        atime,
        mtime,
        ..SetAttr::default()
    }
}

/// Root sets every timestamp of `ino` far in the past, so any change an operation makes shows.
async fn age(t: &TestVolume, ino: Ino) {
    let set = SetAttr {
        atime: Some(TimeSet::At(Timestamp(1_000))),
        mtime: Some(TimeSet::At(Timestamp(1_000))),
        ctime: Some(Timestamp(1_000)),
        ..SetAttr::default()
    };
    let attr = t
        .volume
        .setattr(&Caller::root(), ino, &set)
        .await
        .expect("age");
    assert_eq!(
        (attr.atime, attr.mtime, attr.ctime),
        (Timestamp(1_000), Timestamp(1_000), Timestamp(1_000))
    );
}

const ANY: XattrMode = XattrMode::Any;

backend_tests! {
    async fn getattr_describes_a_new_file(t: TestVolume) {
        let v = &t.volume;
        let w = t.mkdir_mode("/w", 0o777).await;
        let before = now();
        let (created, fh) = v.create(&alice(), w, b"f", 0o640, libc::O_WRONLY).await.expect("create");
        let after = now();
        v.release(&alice(), fh).await.expect("release");
        let attr = v.getattr(&bob(), created.ino).await.expect("anyone may stat");
        assert_eq!(attr, created);
        assert_eq!(attr.kind, FileType::Regular);
        assert_eq!(attr.mode(), libc::S_IFREG | 0o640);
        assert_eq!((attr.uid, attr.gid), (1000, 1000), "owned by the creator's uid and gid");
        assert_eq!((attr.nlink, attr.size, attr.blocks, attr.rdev), (1, 0, 0, 0));
        assert!(attr.blksize > 0);
        assert!(before <= attr.btime && attr.btime <= after, "{before:?} <= {:?} <= {after:?}", attr.btime);
        assert_eq!((attr.atime, attr.mtime, attr.ctime), (attr.btime, attr.btime, attr.btime));

        t.write_file("/w/f", &[1; 1000]).await;
        let attr = t.stat("/w/f").await;
        assert_eq!(attr.size, 1000);
        assert!(attr.blocks >= 2, "1000 bytes need at least two 512-byte units, got {}", attr.blocks);

        let root_dir = v.getattr(&alice(), Ino::ROOT).await.expect("stat /");
        assert_eq!((root_dir.kind, root_dir.perm, root_dir.uid, root_dir.nlink), (FileType::Directory, 0o755, 0, 3));
        assert_errno!(v.getattr(&Caller::root(), Ino(1 << 40)).await, libc::ENOENT);
    }

    async fn chmod_is_for_the_owner_and_root(t: TestVolume) {
        let v = &t.volume;
        t.mkdir_mode("/w", 0o777).await;
        let f = t.write_file_as(&alice(), "/w/f", b"", 0o644).await.expect("create").ino;
        assert_eq!(v.setattr(&alice(), f, &chmod(0o600)).await.expect("owner chmod").perm, 0o600);
        assert_errno!(v.setattr(&bob(), f, &chmod(0o777)).await, libc::EPERM);
        assert_eq!(t.stat("/w/f").await.perm, 0o600);
        assert_eq!(v.setattr(&Caller::root(), f, &chmod(0o4711)).await.expect("root chmod").perm, 0o4711);
        // Type bits in the mode are ignored: a file stays a file.
        let attr = v.setattr(&alice(), f, &chmod(libc::S_IFDIR | 0o750)).await.expect("chmod with type bits");
        assert_eq!((attr.kind, attr.perm), (FileType::Regular, 0o750));

        // setgid is silently dropped when the owner is not in the file's group.
        t.chown("/w/f", 1000, 3000).await;
        assert_eq!(v.setattr(&alice(), f, &chmod(0o2755)).await.expect("chmod g+s").perm, 0o755);
        let member = user(1000, 1000, &[3000]);
        assert_eq!(v.setattr(&member, f, &chmod(0o2755)).await.expect("chmod g+s as a member").perm, 0o2755);
    }

    async fn chown_rules(t: TestVolume) {
        let v = &t.volume;
        t.mkdir_mode("/w", 0o777).await;
        let f = t.write_file_as(&alice(), "/w/f", b"", 0o644).await.expect("create").ino;
        let member = user(1000, 1000, &[3000]);
        assert_errno!(v.setattr(&alice(), f, &chown(Some(2000), None)).await, libc::EPERM);
        // "Changing" the owner to oneself is allowed.
        v.setattr(&alice(), f, &chown(Some(1000), None)).await.expect("chown to self");
        assert_errno!(v.setattr(&alice(), f, &chown(None, Some(3000))).await, libc::EPERM);
        let attr = v.setattr(&member, f, &chown(None, Some(3000))).await.expect("chgrp to a group of the owner");
        assert_eq!((attr.uid, attr.gid), (1000, 3000));
        assert_errno!(v.setattr(&member, f, &chown(None, Some(4000))).await, libc::EPERM);
        // A non-owner may not change the group, even to its own group.
        assert_errno!(v.setattr(&bob(), f, &chown(None, Some(2000))).await, libc::EPERM);
        assert_errno!(v.setattr(&user(2000, 2000, &[3000]), f, &chown(None, Some(3000))).await, libc::EPERM);
        assert_eq!(t.stat("/w/f").await.gid, 3000);
        let attr = v.setattr(&Caller::root(), f, &chown(Some(2000), Some(5000))).await.expect("root gives away");
        assert_eq!((attr.uid, attr.gid), (2000, 5000));
        let attr = v.setattr(&Caller::root(), f, &chown(None, Some(6000))).await.expect("root chgrp");
        assert_eq!((attr.uid, attr.gid), (2000, 6000));
    }

    async fn chown_clears_setuid_and_setgid_of_files(t: TestVolume) {
        let v = &t.volume;
        let root = Caller::root();
        let f = t.write_file("/f", b"").await.ino;
        t.chmod("/f", 0o6755).await;
        assert_eq!(v.setattr(&root, f, &chown(Some(1000), None)).await.expect("chown").perm, 0o755);
        // setgid without group execute (a locking hint, not a privilege) stays.
        let g = t.write_file("/g", b"").await.ino;
        t.chmod("/g", 0o2644).await;
        assert_eq!(v.setattr(&root, g, &chown(Some(1000), None)).await.expect("chown").perm, 0o2644);
        // Directories keep theirs.
        let d = t.mkdir_mode("/d", 0o6755).await;
        assert_eq!(v.setattr(&root, d, &chown(Some(1000), None)).await.expect("chown dir").perm, 0o6755);
        // Also when the owner changes the group.
        let member = user(1000, 1000, &[3000]);
        v.setattr(&member, f, &chmod(0o4755)).await.expect("owner sets setuid");
        assert_eq!(v.setattr(&member, f, &chown(None, Some(3000))).await.expect("chgrp").perm, 0o755);
    }

    async fn truncate_through_setattr(t: TestVolume) {
        let v = &t.volume;
        let f = t.write_file("/f", b"0123456789").await.ino;
        let shrink = SetAttr { size: Some(4), ..SetAttr::default() };
        assert_eq!(v.setattr(&Caller::root(), f, &shrink).await.expect("shrink").size, 4);
        assert_eq!(t.read_file("/f").await, b"0123");
        let grow = SetAttr { size: Some(8), ..SetAttr::default() };
        v.setattr(&Caller::root(), f, &grow).await.expect("grow");
        assert_eq!(t.read_file("/f").await, b"0123\0\0\0\0");

        // Write permission is needed, unless the caller truncates through a handle open for
        // writing (ftruncate after the mode changed).
        assert_errno!(v.setattr(&bob(), f, &shrink).await, libc::EACCES);
        t.mkdir_mode("/w", 0o777).await;
        let (mine, fh) = v.create(&alice(), t.ino("/w").await, b"mine", 0o644, libc::O_WRONLY).await.expect("create");
        v.setattr(&alice(), mine.ino, &chmod(0o444)).await.expect("chmod");
        assert_errno!(v.setattr(&alice(), mine.ino, &grow).await, libc::EACCES);
        let through_handle = SetAttr { size: Some(8), handle: Some(fh), ..SetAttr::default() };
        assert_eq!(v.setattr(&alice(), mine.ino, &through_handle).await.expect("ftruncate").size, 8);
        v.release(&alice(), fh).await.expect("release");

        let d = t.mkdir_p("/d").await;
        assert_errno!(v.setattr(&Caller::root(), d, &grow).await, libc::EISDIR);
        let fifo = v.mknod(&Caller::root(), Ino::ROOT, b"fifo", libc::S_IFIFO | 0o666, 0).await.expect("mkfifo");
        assert_errno!(v.setattr(&Caller::root(), fifo.ino, &grow).await, libc::EINVAL);
    }

    async fn utimes_permissions(t: TestVolume) {
        let v = &t.volume;
        let explicit = Timestamp(1_500_000_000_123_456_789);
        let before_epoch = Timestamp(-86_400_000_000_000 + 7);
        t.mkdir_mode("/w", 0o777).await;
        let writable = t.write_file("/w/writable", b"").await.ino;
        t.chmod("/w/writable", 0o666).await;
        let readonly = t.write_file("/w/readonly", b"").await.ino;

        // Non-owners: "now" needs write permission, explicit times need ownership.
        let now_both = times(Some(TimeSet::Now), Some(TimeSet::Now));
        let before = now();
        let attr = v.setattr(&alice(), writable, &now_both).await.expect("touch a writable file");
        assert!(attr.atime >= before && attr.mtime >= before);
        assert_errno!(v.setattr(&alice(), writable, &times(None, Some(TimeSet::At(explicit)))).await, libc::EPERM);
        assert_errno!(v.setattr(&alice(), readonly, &now_both).await, libc::EACCES);
        assert_errno!(v.setattr(&alice(), readonly, &times(Some(TimeSet::At(explicit)), None)).await, libc::EPERM);

        // The owner sets exact times, to the nanosecond, even before the epoch.
        let mine = t.write_file_as(&alice(), "/w/mine", b"", 0o400).await.expect("create").ino;
        let attr = v
            .setattr(&alice(), mine, &times(Some(TimeSet::At(before_epoch)), Some(TimeSet::At(explicit))))
            .await
            .expect("owner sets explicit times");
        assert_eq!((attr.atime, attr.mtime), (before_epoch, explicit));
        let seen = t.stat("/w/mine").await;
        assert_eq!((seen.atime, seen.mtime), (before_epoch, explicit));
        // Only one of the two.
        v.setattr(&alice(), mine, &times(None, Some(TimeSet::Now))).await.expect("owner touches mtime");
        assert_eq!(t.stat("/w/mine").await.atime, before_epoch, "atime untouched");
        // Root sets anything.
        v.setattr(&Caller::root(), readonly, &times(Some(TimeSet::At(explicit)), None)).await.expect("root");
        assert_eq!(t.stat("/w/readonly").await.atime, explicit);
    }

    async fn ctime_follows_every_change(t: TestVolume) {
        let root = Caller::root();
        let v = &t.volume;
        let f = t.write_file("/f", b"data").await.ino;
        let old = Timestamp(1_000);

        // Metadata changes set ctime and leave mtime alone.
        let metadata_changes: [(&str, SetAttr); 3] = [
            ("chmod", chmod(0o600)),
            ("chown", chown(Some(1000), Some(1000))),
            ("utimes", times(Some(TimeSet::At(old)), Some(TimeSet::At(old)))),
        ];
        for (what, set) in metadata_changes {
            age(&t, f).await;
            let before = now();
            v.setattr(&root, f, &set).await.expect(what);
            let attr = t.stat("/f").await;
            assert!(attr.ctime >= before, "{what} sets ctime: {:?}", attr.ctime);
            assert_eq!(attr.mtime, old, "{what} leaves mtime");
        }

        age(&t, f).await;
        let before = now();
        v.link(&root, f, Ino::ROOT, b"g").await.expect("link");
        assert!(t.stat("/f").await.ctime >= before, "link sets ctime");

        age(&t, f).await;
        let before = now();
        v.unlink(&root, Ino::ROOT, b"g").await.expect("unlink");
        assert!(t.stat("/f").await.ctime >= before, "unlinking another name sets ctime");

        age(&t, f).await;
        let before = now();
        v.rename(&root, Ino::ROOT, b"f", Ino::ROOT, b"h", RenameFlags::default()).await.expect("rename");
        assert!(t.stat("/h").await.ctime >= before, "rename sets the ctime of the renamed inode");

        age(&t, f).await;
        let before = now();
        v.setxattr(&root, f, b"user.k", b"v", ANY).await.expect("setxattr");
        let attr = t.stat("/h").await;
        assert!(attr.ctime >= before, "setxattr sets ctime");
        assert_eq!(attr.mtime, old, "setxattr leaves mtime");

        age(&t, f).await;
        let before = now();
        v.setattr(&root, f, &SetAttr { size: Some(1), ..SetAttr::default() }).await.expect("truncate");
        let attr = t.stat("/h").await;
        assert!(attr.ctime >= before && attr.mtime >= before, "truncate sets ctime and mtime");

        // Directory entries changing set the directory's mtime and ctime.
        age(&t, Ino::ROOT).await;
        let before = now();
        t.write_file("/new", b"").await;
        let dir = t.stat("/").await;
        assert!(dir.mtime >= before && dir.ctime >= before, "creating an entry touches the directory");
    }

    async fn access_checks_each_class(t: TestVolume) {
        let v = &t.volume;
        let (r, w, x) = (libc::R_OK as u32, libc::W_OK as u32, libc::X_OK as u32);
        let f = t.write_file("/f", b"").await.ino;
        t.chown("/f", 1000, 3000).await;
        t.chmod("/f", 0o640).await;
        let member = user(2500, 2500, &[3000]);
        v.access(&alice(), f, r | w).await.expect("owner rw");
        assert_errno!(v.access(&alice(), f, x).await, libc::EACCES);
        assert_errno!(v.access(&alice(), f, r | x).await, libc::EACCES);
        v.access(&member, f, r).await.expect("group r");
        assert_errno!(v.access(&member, f, w).await, libc::EACCES);
        assert_errno!(v.access(&bob(), f, r).await, libc::EACCES);
        // F_OK only asks whether it exists.
        v.access(&bob(), f, libc::F_OK as u32).await.expect("F_OK");
        assert_errno!(v.access(&bob(), Ino(1 << 40), libc::F_OK as u32).await, libc::ENOENT);

        // Root reads and writes anything, but executes a file only if someone may.
        let root = Caller::root();
        t.chmod("/f", 0o000).await;
        v.access(&root, f, r | w).await.expect("root rw on 0000");
        assert_errno!(v.access(&root, f, x).await, libc::EACCES);
        t.chmod("/f", 0o010).await;
        v.access(&root, f, x).await.expect("root x when group may execute");
        let d = t.mkdir_mode("/d", 0o000).await;
        v.access(&root, d, r | w | x).await.expect("root searches any directory");
        assert_errno!(v.access(&alice(), d, x).await, libc::EACCES);
    }

    async fn statfs_reflects_quota_and_usage(t: TestVolume) {
        let quota = Quota { bytes: Some(1 << 20), inodes: Some(100) };
        let s = t.new_tenant(TenantOptions { block_size: 4096, quota, ..TenantOptions::default() }).await;
        let root = Caller::root();
        let st = s.volume.statfs(&root).await.expect("statfs");
        assert_eq!(st.name_max, 255);
        assert_eq!(u64::from(st.block_size) * st.blocks, 1 << 20, "the volume is as large as the byte quota");
        assert_eq!(st.blocks_free, st.blocks, "nothing stored yet");
        assert_eq!(st.blocks_available, st.blocks_free);
        assert_eq!(st.files, 100);
        assert_eq!(st.files_free, 99, "the root directory uses an inode");

        s.write_file("/f", &[9; 8192]).await;
        s.mkdir_p("/d").await;
        let st2 = s.volume.statfs(&root).await.expect("statfs");
        assert_eq!(st2.files_free, 97);
        assert_eq!((st.blocks_free - st2.blocks_free) * u64::from(st.block_size), 8192);

        // Without a quota: a large volume whose free space still shrinks as data is written.
        let st = t.volume.statfs(&root).await.expect("statfs");
        assert!(st.blocks_free > 1 << 20);
        t.write_file("/big", &[1; 1 << 20]).await;
        let st2 = t.volume.statfs(&root).await.expect("statfs");
        assert_eq!((st.blocks_free - st2.blocks_free) * u64::from(st.block_size), 1 << 20);
        assert_eq!(st.files_free - st2.files_free, 1);
    }

    async fn xattrs_round_trip(t: TestVolume) {
        let root = Caller::root();
        let v = &t.volume;
        let f = t.write_file("/f", b"").await.ino;
        let all: Vec<u8> = (0..=255u8).collect();
        v.setxattr(&root, f, b"user.plain", b"value", ANY).await.expect("set");
        v.setxattr(&root, f, b"user.binary", &all, ANY).await.expect("set binary");
        v.setxattr(&root, f, b"user.empty", b"", ANY).await.expect("set empty");
        assert_eq!(v.getxattr(&root, f, b"user.plain").await.expect("get"), b"value");
        assert_eq!(v.getxattr(&root, f, b"user.binary").await.expect("get"), all);
        assert_eq!(v.getxattr(&root, f, b"user.empty").await.expect("get"), b"");
        let mut names = v.listxattr(&alice(), f).await.expect("list");
        names.sort();
        assert_eq!(names, [&b"user.binary"[..], b"user.empty", b"user.plain"]);

        v.setxattr(&root, f, b"user.plain", b"longer value", ANY).await.expect("replace");
        assert_eq!(v.getxattr(&root, f, b"user.plain").await.expect("get"), b"longer value");
        v.setxattr(&root, f, b"user.plain", b"v", ANY).await.expect("shrink");
        assert_eq!(v.getxattr(&root, f, b"user.plain").await.expect("get"), b"v");

        v.removexattr(&root, f, b"user.plain").await.expect("remove");
        assert_errno!(v.getxattr(&root, f, b"user.plain").await, libc::ENODATA);
        assert_errno!(v.removexattr(&root, f, b"user.plain").await, libc::ENODATA);
        assert_eq!(v.listxattr(&root, f).await.expect("list").len(), 2);
        assert_errno!(v.getxattr(&root, f, b"user.never").await, libc::ENODATA);

        // Directories carry them too, and they are per inode.
        let d = t.mkdir_p("/d").await;
        v.setxattr(&root, d, b"user.plain", b"dir", ANY).await.expect("set on a directory");
        assert_eq!(v.getxattr(&root, d, b"user.plain").await.expect("get"), b"dir");
        assert_errno!(v.getxattr(&root, f, b"user.plain").await, libc::ENODATA);
        // Hard links share them.
        v.link(&root, f, Ino::ROOT, b"g").await.expect("link");
        assert_eq!(v.getxattr(&root, t.ino("/g").await, b"user.binary").await.expect("get via link"), all);
    }

    async fn xattr_create_and_replace_flags(t: TestVolume) {
        let root = Caller::root();
        let v = &t.volume;
        let f = t.write_file("/f", b"").await.ino;
        assert_errno!(v.setxattr(&root, f, b"user.k", b"1", XattrMode::Replace).await, libc::ENODATA);
        assert_errno!(v.getxattr(&root, f, b"user.k").await, libc::ENODATA);
        v.setxattr(&root, f, b"user.k", b"1", XattrMode::Create).await.expect("create");
        assert_errno!(v.setxattr(&root, f, b"user.k", b"2", XattrMode::Create).await, libc::EEXIST);
        assert_eq!(v.getxattr(&root, f, b"user.k").await.expect("get"), b"1");
        v.setxattr(&root, f, b"user.k", b"3", XattrMode::Replace).await.expect("replace");
        assert_eq!(v.getxattr(&root, f, b"user.k").await.expect("get"), b"3");
    }

    async fn xattr_name_and_size_limits(t: TestVolume) {
        let root = Caller::root();
        let v = &t.volume;
        let f = t.write_file("/f", b"").await.ino;
        let name_255 = [&b"user."[..], &[b'n'; 250]].concat();
        let name_256 = [&b"user."[..], &[b'n'; 251]].concat();
        v.setxattr(&root, f, &name_255, b"v", ANY).await.expect("a 255-byte name");
        assert_eq!(v.getxattr(&root, f, &name_255).await.expect("get"), b"v");
        assert_errno!(v.setxattr(&root, f, &name_256, b"v", ANY).await, libc::ERANGE);
        assert_errno!(v.getxattr(&root, f, &name_256).await, libc::ERANGE);
        assert_errno!(v.setxattr(&root, f, b"", b"v", ANY).await, libc::ERANGE);
        assert_errno!(v.getxattr(&root, f, b"").await, libc::ERANGE);
        assert_errno!(v.removexattr(&root, f, b"").await, libc::ERANGE);

        let largest = vec![0xA5; 65536];
        v.setxattr(&root, f, b"user.large", &largest, ANY).await.expect("a 64 KiB value");
        assert_eq!(v.getxattr(&root, f, b"user.large").await.expect("get"), largest);
        assert_errno!(v.setxattr(&root, f, b"user.huge", &vec![0; 65537], ANY).await, libc::E2BIG);
        assert_errno!(v.getxattr(&root, f, b"user.huge").await, libc::ENODATA);

        for unsupported in [&b"foo.bar"[..], b"system.posix_acl_access", b"nonamespace"] {
            assert_errno!(v.setxattr(&root, f, unsupported, b"v", ANY).await, libc::EOPNOTSUPP);
            assert_errno!(v.getxattr(&root, f, unsupported).await, libc::EOPNOTSUPP);
        }
    }

    async fn xattr_namespace_permissions(t: TestVolume) {
        let root = Caller::root();
        let v = &t.volume;
        t.mkdir_mode("/w", 0o777).await;
        let link = v.symlink(&root, t.ino("/w").await, b"link", b"target").await.expect("symlink").ino;
        assert_errno!(v.setxattr(&root, link, b"user.k", b"v", ANY).await, libc::EPERM);
        let fifo = v.mknod(&root, Ino::ROOT, b"fifo", libc::S_IFIFO | 0o666, 0).await.expect("fifo").ino;
        assert_errno!(v.setxattr(&root, fifo, b"user.k", b"v", ANY).await, libc::EPERM);
        v.setxattr(&root, link, b"trusted.k", b"v", ANY).await.expect("trusted.* on a symlink, as root");

        // user.*: read needs read permission, write needs write permission.
        let f = t.write_file_as(&alice(), "/w/f", b"", 0o600).await.expect("create").ino;
        v.setxattr(&alice(), f, b"user.k", b"v", ANY).await.expect("owner sets");
        assert_errno!(v.getxattr(&bob(), f, b"user.k").await, libc::EACCES);
        assert_errno!(v.setxattr(&bob(), f, b"user.k", b"w", ANY).await, libc::EACCES);
        assert_errno!(v.removexattr(&bob(), f, b"user.k").await, libc::EACCES);
        v.setattr(&alice(), f, &chmod(0o646)).await.expect("chmod o+rw");
        assert_eq!(v.getxattr(&bob(), f, b"user.k").await.expect("other reads"), b"v");
        v.setxattr(&bob(), f, b"user.k", b"w", ANY).await.expect("other writes");

        // trusted.* and security.*: written by root only; trusted.* is invisible to others.
        assert_errno!(v.setxattr(&alice(), f, b"trusted.k", b"v", ANY).await, libc::EPERM);
        assert_errno!(v.setxattr(&alice(), f, b"security.k", b"v", ANY).await, libc::EPERM);
        v.setxattr(&root, f, b"trusted.k", b"t", ANY).await.expect("root sets trusted");
        v.setxattr(&root, f, b"security.k", b"s", ANY).await.expect("root sets security");
        assert_errno!(v.getxattr(&alice(), f, b"trusted.k").await, libc::ENODATA);
        assert_eq!(v.getxattr(&alice(), f, b"security.k").await.expect("security is readable"), b"s");
        assert_eq!(v.getxattr(&root, f, b"trusted.k").await.expect("root reads trusted"), b"t");
        let mut seen_by_alice = v.listxattr(&alice(), f).await.expect("list");
        seen_by_alice.sort();
        assert_eq!(seen_by_alice, [&b"security.k"[..], b"user.k"]);
        assert_eq!(v.listxattr(&root, f).await.expect("list").len(), 3);
        assert_errno!(v.removexattr(&alice(), f, b"security.k").await, libc::EPERM);

        // In a sticky directory only the owner sets user.* on it, write permission or not.
        let sticky = t.mkdir_mode("/sticky", 0o1777).await;
        assert_errno!(v.setxattr(&alice(), sticky, b"user.k", b"v", ANY).await, libc::EPERM);
        v.setxattr(&root, sticky, b"user.k", b"v", ANY).await.expect("the owner (root) may");
    }
}
