//! Permission checks: owner/group/other classes, supplementary groups, the sticky bit, setgid
//! directories, setuid/setgid clearing on write, and the directory permissions behind creating,
//! removing and moving names.
//!
//! Expected results are those of Linux on ext4 (checked as root and as an unprivileged user with
//! `setpriv --reuid --regid --groups`).

use tarbox_fs::Filesystem as _;
use tarbox_fs::{Caller, FileHandle, Ino, RenameFlags, SetAttr};
use tarbox_tests::{TestVolume, alice, assert_errno, backend_tests, bob, user};

/// uid 2500, not the owner of anything, member of group 3000 through a supplementary group.
fn carol() -> Caller {
    user(2500, 2500, &[3000])
}

const PLAIN: RenameFlags = RenameFlags {
    no_replace: false,
    exchange: false,
};

/// Whether `caller` may open `ino` with `flags`; the handle is released at once.
async fn can_open(t: &TestVolume, caller: &Caller, ino: Ino, flags: i32) -> bool {
    match t.volume.open(caller, ino, flags).await {
        Ok(fh) => {
            t.volume.release(caller, fh).await.expect("release");
            true
        }
        Err(e) => {
            assert_eq!(e.errno(), libc::EACCES, "open refused with {e:?}");
            false
        }
    }
}

async fn create_as(t: &TestVolume, caller: &Caller, dir: Ino, name: &str, mode: u32) -> Ino {
    let (attr, fh) = t
        .volume
        .create(caller, dir, name.as_bytes(), mode, libc::O_WRONLY)
        .await
        .unwrap_or_else(|e| panic!("create {name} as uid {}: {e}", caller.uid));
    t.volume.release(caller, fh).await.expect("release");
    attr.ino
}

async fn write_as(t: &TestVolume, caller: &Caller, fh: FileHandle, data: &[u8]) {
    t.volume.write(caller, fh, 0, data).await.expect("write");
}

backend_tests! {
    async fn owner_group_and_other_classes(t: TestVolume) {
        let f = t.write_file("/f", b"data").await.ino;
        t.chown("/f", 1000, 3000).await;
        t.chmod("/f", 0o640).await;
        let (rd, wr, rw) = (libc::O_RDONLY, libc::O_WRONLY, libc::O_RDWR);
        assert!(can_open(&t, &alice(), f, rw).await, "owner: rw-");
        assert!(can_open(&t, &carol(), f, rd).await, "supplementary group member: r--");
        assert!(!can_open(&t, &carol(), f, wr).await);
        let primary = Caller::new(2600, 3000);
        assert!(can_open(&t, &primary, f, rd).await, "primary group member: r--");
        assert!(!can_open(&t, &primary, f, wr).await);
        assert!(!can_open(&t, &bob(), f, rd).await, "other: ---");
        assert!(can_open(&t, &Caller::root(), f, rw).await, "root");
    }

    async fn a_more_restrictive_class_is_not_widened(t: TestVolume) {
        let f = t.write_file("/f", b"data").await.ino;
        t.chown("/f", 1000, 3000).await;
        // The owner class applies to the owner even when group and other allow more.
        t.chmod("/f", 0o077).await;
        assert!(!can_open(&t, &alice(), f, libc::O_RDONLY).await);
        assert!(!can_open(&t, &alice(), f, libc::O_WRONLY).await);
        let owner_in_group = user(1000, 1000, &[3000]);
        assert!(!can_open(&t, &owner_in_group, f, libc::O_RDONLY).await);
        assert!(can_open(&t, &carol(), f, libc::O_RDWR).await);
        assert!(can_open(&t, &bob(), f, libc::O_RDWR).await);
        // Likewise the group class for members.
        t.chmod("/f", 0o604).await;
        assert!(!can_open(&t, &carol(), f, libc::O_RDONLY).await);
        assert!(can_open(&t, &bob(), f, libc::O_RDONLY).await);
        assert!(can_open(&t, &alice(), f, libc::O_RDWR).await);
    }

    async fn creating_and_removing_need_write_and_search_on_the_directory(t: TestVolume) {
        let v = &t.volume;
        let d = t.mkdir_mode("/d", 0o755).await;
        t.chown("/d", 1000, 1000).await;
        t.write_file("/d/existing", b"").await;
        assert_errno!(v.create(&bob(), d, b"x", 0o644, libc::O_WRONLY).await, libc::EACCES);
        assert_errno!(v.mkdir(&bob(), d, b"x", 0o755).await, libc::EACCES);
        assert_errno!(v.symlink(&bob(), d, b"x", b"t").await, libc::EACCES);
        assert_errno!(v.unlink(&bob(), d, b"existing").await, libc::EACCES);
        assert_errno!(v.rename(&bob(), d, b"existing", d, b"x", PLAIN).await, libc::EACCES);
        // Write without search is not enough either.
        t.chmod("/d", 0o776).await;
        assert_errno!(v.create(&bob(), d, b"x", 0o644, libc::O_WRONLY).await, libc::EACCES);
        assert_errno!(v.unlink(&bob(), d, b"existing").await, libc::EACCES);
        // Through the group class.
        t.chmod("/d", 0o770).await;
        let member = user(2000, 2000, &[1000]);
        create_as(&t, &member, d, "by-member", 0o644).await;
        v.unlink(&member, d, b"existing").await.expect("a group member removes");
        assert_eq!(t.ls_sorted("/d").await, ["by-member"]);
    }

    async fn sticky_directories_protect_other_users_files(t: TestVolume) {
        let v = &t.volume;
        let tmp = t.mkdir_mode("/tmp", 0o1777).await;
        create_as(&t, &alice(), tmp, "alices", 0o666).await;
        create_as(&t, &bob(), tmp, "bobs", 0o666).await;
        assert_errno!(v.unlink(&bob(), tmp, b"alices").await, libc::EPERM);
        assert_errno!(v.rename(&bob(), tmp, b"alices", tmp, b"stolen", PLAIN).await, libc::EPERM);
        // Replacing someone else's file by renaming onto it is removing it.
        assert_errno!(v.rename(&bob(), tmp, b"bobs", tmp, b"alices", PLAIN).await, libc::EPERM);
        assert_eq!(t.ls_sorted("/tmp").await, ["alices", "bobs"]);
        // Each user still manages their own files.
        v.rename(&bob(), tmp, b"bobs", tmp, b"bobs2", PLAIN).await.expect("own file");
        v.unlink(&alice(), tmp, b"alices").await.expect("own file");

        // The directory's owner and root may remove anything.
        let shared = t.mkdir_mode("/shared", 0o1777).await;
        t.chown("/shared", 2500, 2500).await;
        create_as(&t, &alice(), shared, "a", 0o644).await;
        create_as(&t, &alice(), shared, "b", 0o644).await;
        v.unlink(&carol(), shared, b"a").await.expect("the directory owner removes");
        v.unlink(&Caller::root(), shared, b"b").await.expect("root removes");

        // Without the sticky bit, write permission on the directory is enough.
        let open = t.mkdir_mode("/open", 0o777).await;
        create_as(&t, &alice(), open, "a", 0o600).await;
        v.unlink(&bob(), open, b"a").await.expect("no sticky bit");
    }

    async fn setgid_directories_pass_on_their_group(t: TestVolume) {
        let v = &t.volume;
        let sg = t.mkdir_mode("/sg", 0o2777).await;
        t.chown("/sg", 0, 3000).await;
        t.chmod("/sg", 0o2777).await;
        let member = user(1000, 1000, &[3000]);

        let f = create_as(&t, &member, sg, "file", 0o644).await;
        let attr = v.getattr(&member, f).await.expect("getattr");
        assert_eq!((attr.uid, attr.gid, attr.perm), (1000, 3000, 0o644), "files take the group, not the bit");
        let sub = v.mkdir(&member, sg, b"sub", 0o755).await.expect("mkdir");
        assert_eq!((sub.gid, sub.perm), (3000, 0o2755), "subdirectories take the group and the bit");
        let deeper = v.mkdir(&member, sub.ino, b"deeper", 0o700).await.expect("mkdir");
        assert_eq!((deeper.gid, deeper.perm), (3000, 0o2700), "and pass them on");

        // Non-members get the group too, but may not create setgid files for it.
        let by_bob = v.create(&bob(), sg, b"bobs", 0o2755, libc::O_WRONLY).await.expect("create");
        v.release(&bob(), by_bob.1).await.expect("release");
        assert_eq!((by_bob.0.gid, by_bob.0.perm), (3000, 0o755));

        // Outside a setgid directory files take the caller's primary group.
        let plain = t.mkdir_mode("/plain", 0o777).await;
        let f = create_as(&t, &member, plain, "file", 0o2755).await;
        let attr = v.getattr(&member, f).await.expect("getattr");
        assert_eq!((attr.gid, attr.perm), (1000, 0o2755));
        let sub = v.mkdir(&member, plain, b"sub", 0o755).await.expect("mkdir");
        assert_eq!((sub.gid, sub.perm), (1000, 0o755));
    }

    async fn writes_by_non_root_clear_setuid_and_setgid(t: TestVolume) {
        let v = &t.volume;
        let a = alice();
        let w = t.mkdir_mode("/w", 0o777).await;
        let f = create_as(&t, &a, w, "prog", 0o755).await;
        v.setattr(&a, f, &SetAttr { mode: Some(0o6755), ..SetAttr::default() }).await.expect("chmod");
        let fh = v.open(&a, f, libc::O_WRONLY).await.expect("open");
        write_as(&t, &a, fh, b"patched").await;
        v.release(&a, fh).await.expect("release");
        assert_eq!(t.stat("/w/prog").await.perm, 0o755);

        // setgid without group execute is a locking hint and stays.
        let g = create_as(&t, &a, w, "locked", 0o644).await;
        v.setattr(&a, g, &SetAttr { mode: Some(0o2664), ..SetAttr::default() }).await.expect("chmod");
        let fh = v.open(&a, g, libc::O_WRONLY).await.expect("open");
        write_as(&t, &a, fh, b"x").await;
        v.release(&a, fh).await.expect("release");
        assert_eq!(t.stat("/w/locked").await.perm, 0o2664);

        // Truncation by the owner clears them as well.
        v.setattr(&a, f, &SetAttr { mode: Some(0o4755), ..SetAttr::default() }).await.expect("chmod");
        v.setattr(&a, f, &SetAttr { size: Some(1), ..SetAttr::default() }).await.expect("truncate");
        assert_eq!(t.stat("/w/prog").await.perm, 0o755);

        // Root keeps them (CAP_FSETID).
        let r = t.write_file("/rootprog", b"").await.ino;
        t.chmod("/rootprog", 0o6755).await;
        let root = Caller::root();
        let fh = v.open(&root, r, libc::O_WRONLY).await.expect("open");
        write_as(&t, &root, fh, b"patched").await;
        v.release(&root, fh).await.expect("release");
        assert_eq!(t.stat("/rootprog").await.perm, 0o6755);
    }

    async fn moving_a_directory_to_another_parent_needs_write_on_it(t: TestVolume) {
        let v = &t.volume;
        let w = t.mkdir_mode("/w", 0o777).await;
        t.mkdir_mode("/w/rootdir", 0o755).await;
        let mine = v.mkdir(&alice(), w, b"mine", 0o777).await.expect("mkdir").ino;
        // Moving it rewrites its "..", which needs write permission on it.
        assert_errno!(v.rename(&alice(), w, b"rootdir", mine, b"rootdir", PLAIN).await, libc::EACCES);
        // Renaming it within its parent does not touch "..".
        v.rename(&alice(), w, b"rootdir", w, b"renamed", PLAIN).await.expect("rename in place");
        assert_eq!(t.ls_sorted("/w").await, ["mine", "renamed"]);
        // Files move freely.
        create_as(&t, &bob(), w, "file", 0o600).await;
        v.rename(&alice(), w, b"file", mine, b"file", PLAIN).await.expect("move someone's file");
        assert_eq!(t.ls("/w/mine").await, ["file"]);
    }
}
