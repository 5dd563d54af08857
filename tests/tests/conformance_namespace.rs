//! Namespace operations: lookup, mknod, mkdir, unlink, rmdir, symlink, readlink, link, rename,
//! and the name rules they share (NAME_MAX, '/', NUL).
//!
//! Expected results are those of Linux on ext4/tmpfs.

use tarbox_fs::Filesystem as _;
use tarbox_fs::{Caller, FileType, Ino, RenameFlags};
use tarbox_tests::{TestVolume, alice, assert_errno, backend_tests, bob};

const PLAIN: RenameFlags = RenameFlags {
    no_replace: false,
    exchange: false,
};
const NOREPLACE: RenameFlags = RenameFlags {
    no_replace: true,
    exchange: false,
};
const EXCHANGE: RenameFlags = RenameFlags {
    no_replace: false,
    exchange: true,
};

backend_tests! {
    async fn lookup_finds_names_and_dot_entries(t: TestVolume) {
        let root = Caller::root();
        let v = &t.volume;
        let sub = t.mkdir_p("/d/sub").await;
        let d = t.ino("/d").await;
        let file = t.write_file("/d/f", b"x").await;

        assert_eq!(v.lookup(&root, d, b"f").await.expect("lookup f").ino, file.ino);
        assert_eq!(v.lookup(&root, d, b"sub").await.expect("lookup sub").kind, FileType::Directory);
        assert_eq!(v.lookup(&root, d, b".").await.expect("lookup .").ino, d);
        assert_eq!(v.lookup(&root, sub, b"..").await.expect("lookup ..").ino, d);
        // The root is its own parent.
        assert_eq!(v.lookup(&root, Ino::ROOT, b"..").await.expect("lookup /..").ino, Ino::ROOT);
    }

    async fn lookup_errors(t: TestVolume) {
        let root = Caller::root();
        let v = &t.volume;
        let file = t.write_file("/f", b"x").await;
        assert_errno!(v.lookup(&root, Ino::ROOT, b"missing").await, libc::ENOENT);
        assert_errno!(v.lookup(&root, file.ino, b"x").await, libc::ENOTDIR);

        // A directory whose mode denies search to others.
        t.mkdir_mode("/private", 0o700).await;
        t.write_file("/private/secret", b"s").await;
        let private = t.chown("/private", 1000, 1000).await.ino;
        assert!(v.lookup(&alice(), private, b"secret").await.is_ok(), "the owner may search");
        assert_errno!(v.lookup(&bob(), private, b"secret").await, libc::EACCES);
        // Search is checked before existence: no probing of names.
        assert_errno!(v.lookup(&bob(), private, b"missing").await, libc::EACCES);
        assert!(v.lookup(&root, private, b"secret").await.is_ok(), "root bypasses search permission");

        // Read without execute does not grant search.
        let listable = t.mkdir_mode("/listable", 0o744).await;
        t.write_file("/listable/f", b"x").await;
        assert_errno!(v.lookup(&bob(), listable, b"f").await, libc::EACCES);
    }

    async fn mknod_creates_every_node_kind(t: TestVolume) {
        let root = Caller::root();
        let v = &t.volume;
        let cases: [(&[u8], u32, u32, FileType, u32); 6] = [
            (b"reg", libc::S_IFREG | 0o640, 0, FileType::Regular, 0),
            // No type bits means a regular file, as mknod(2) says.
            (b"untyped", 0o600, 0, FileType::Regular, 0),
            (b"fifo", libc::S_IFIFO | 0o644, 0, FileType::Fifo, 0),
            (b"sock", libc::S_IFSOCK | 0o755, 0, FileType::Socket, 0),
            (b"null", libc::S_IFCHR | 0o666, 0x0103, FileType::CharDevice, 0x0103),
            (b"sda1", libc::S_IFBLK | 0o660, 0x0801, FileType::BlockDevice, 0x0801),
        ];
        for (name, mode, rdev, kind, want_rdev) in cases {
            let made = v.mknod(&root, Ino::ROOT, name, mode, rdev).await.expect("mknod");
            let seen = v.lookup(&root, Ino::ROOT, name).await.expect("lookup the new node");
            assert_eq!(seen.ino, made.ino);
            assert_eq!(seen.kind, kind, "{}", String::from_utf8_lossy(name));
            assert_eq!(u32::from(seen.perm), mode & 0o7777);
            assert_eq!(seen.rdev, want_rdev, "rdev of {}", String::from_utf8_lossy(name));
            assert_eq!(seen.nlink, 1);
            assert_eq!(seen.size, 0);
        }
        // A fifo ignores the rdev it is given.
        let fifo = v.mknod(&root, Ino::ROOT, b"fifo2", libc::S_IFIFO | 0o644, 0x0103).await.expect("mknod fifo");
        assert_eq!(fifo.rdev, 0);

        let listing = t.readdir_all(Ino::ROOT).await;
        for (name, kind) in [
            (&b"fifo"[..], FileType::Fifo),
            (b"sock", FileType::Socket),
            (b"null", FileType::CharDevice),
            (b"sda1", FileType::BlockDevice),
            (b"reg", FileType::Regular),
        ] {
            let entry = listing.iter().find(|e| e.name == name).expect("listed");
            assert_eq!(entry.kind, kind, "readdir type of {}", String::from_utf8_lossy(name));
        }
        assert_errno!(v.mknod(&root, Ino::ROOT, b"fifo", libc::S_IFIFO | 0o644, 0).await, libc::EEXIST);
    }

    async fn mknod_of_devices_needs_root(t: TestVolume) {
        let v = &t.volume;
        let shared = t.mkdir_mode("/shared", 0o777).await;
        let a = alice();
        assert_errno!(v.mknod(&a, shared, b"chr", libc::S_IFCHR | 0o666, 0x0103).await, libc::EPERM);
        assert_errno!(v.mknod(&a, shared, b"blk", libc::S_IFBLK | 0o666, 0x0801).await, libc::EPERM);
        assert_errno!(v.lookup(&a, shared, b"chr").await, libc::ENOENT);
        // FIFOs and sockets are for everyone.
        let fifo = v.mknod(&a, shared, b"fifo", libc::S_IFIFO | 0o600, 0).await.expect("fifo as alice");
        assert_eq!((fifo.uid, fifo.gid), (1000, 1000));
        v.mknod(&a, shared, b"sock", libc::S_IFSOCK | 0o600, 0).await.expect("socket as alice");
        // Regular files need write permission on the directory like any creation.
        assert_errno!(v.mknod(&a, Ino::ROOT, b"reg", libc::S_IFREG | 0o600, 0).await, libc::EACCES);
    }

    async fn mkdir_maintains_link_counts(t: TestVolume) {
        let root = Caller::root();
        let v = &t.volume;
        assert_eq!(t.stat("/").await.nlink, 2);
        let a = v.mkdir(&root, Ino::ROOT, b"a", 0o750).await.expect("mkdir a");
        assert_eq!(a.kind, FileType::Directory);
        assert_eq!(a.perm, 0o750);
        assert_eq!(a.nlink, 2, "a new directory has '.' and its name");
        assert_eq!(t.stat("/").await.nlink, 3, "the child's '..' links the parent");

        let b = v.mkdir(&root, a.ino, b"b", 0o755).await.expect("mkdir a/b");
        t.write_file("/a/file", b"").await;
        assert_eq!(t.stat("/a").await.nlink, 3, "only subdirectories add links");
        assert_eq!(v.getattr(&root, b.ino).await.expect("getattr b").nlink, 2);

        v.rmdir(&root, a.ino, b"b").await.expect("rmdir a/b");
        assert_eq!(t.stat("/a").await.nlink, 2);
        v.unlink(&root, a.ino, b"file").await.expect("unlink a/file");
        v.rmdir(&root, Ino::ROOT, b"a").await.expect("rmdir a");
        assert_eq!(t.stat("/").await.nlink, 2);
    }

    async fn mkdir_errors(t: TestVolume) {
        let root = Caller::root();
        let v = &t.volume;
        let file = t.write_file("/f", b"").await;
        t.mkdir_p("/d").await;
        assert_errno!(v.mkdir(&root, Ino::ROOT, b"d", 0o755).await, libc::EEXIST);
        assert_errno!(v.mkdir(&root, Ino::ROOT, b"f", 0o755).await, libc::EEXIST);
        assert_errno!(v.mkdir(&root, Ino::ROOT, b".", 0o755).await, libc::EEXIST);
        assert_errno!(v.mkdir(&root, Ino::ROOT, b"..", 0o755).await, libc::EEXIST);
        assert_errno!(v.mkdir(&root, file.ino, b"x", 0o755).await, libc::ENOTDIR);
        assert_errno!(v.mkdir(&alice(), Ino::ROOT, b"x", 0o755).await, libc::EACCES);
        let readonly = t.mkdir_mode("/ro", 0o555).await;
        t.chown("/ro", 1000, 1000).await;
        assert_errno!(v.mkdir(&alice(), readonly, b"x", 0o755).await, libc::EACCES);
    }

    async fn unlink_removes_names(t: TestVolume) {
        let root = Caller::root();
        let v = &t.volume;
        let d = t.mkdir_p("/d").await;
        t.write_file("/d/f", b"data").await;
        t.write_file("/d/g", b"more").await;
        v.unlink(&root, d, b"f").await.expect("unlink d/f");
        assert_errno!(v.lookup(&root, d, b"f").await, libc::ENOENT);
        assert_eq!(t.ls("/d").await, ["g"]);
        assert_errno!(v.unlink(&root, d, b"f").await, libc::ENOENT);
        assert_errno!(v.unlink(&root, Ino::ROOT, b"d").await, libc::EISDIR);
        assert!(t.resolve("/d").await.is_ok(), "a failed unlink leaves the directory");
        let g = t.ino("/d/g").await;
        assert_errno!(v.unlink(&root, g, b"x").await, libc::ENOTDIR);
        // Removing names needs write permission on the directory, not on the file.
        assert_errno!(v.unlink(&alice(), d, b"g").await, libc::EACCES);
        t.chmod("/d", 0o777).await;
        v.unlink(&alice(), d, b"g").await.expect("alice removes root's file from a 0777 directory");
        assert!(t.ls("/d").await.is_empty());
        assert_eq!(t.usage().await.inodes, 2, "root and /d are left");
    }

    async fn rmdir_rules(t: TestVolume) {
        let root = Caller::root();
        let v = &t.volume;
        let d = t.mkdir_p("/d/sub").await;
        let parent = t.ino("/d").await;
        t.write_file("/file", b"").await;
        assert_errno!(v.rmdir(&root, Ino::ROOT, b"d").await, libc::ENOTEMPTY);
        assert_errno!(v.rmdir(&root, Ino::ROOT, b"file").await, libc::ENOTDIR);
        assert_errno!(v.rmdir(&root, Ino::ROOT, b"missing").await, libc::ENOENT);
        assert_errno!(v.rmdir(&root, d, b".").await, libc::EINVAL);
        assert_errno!(v.rmdir(&root, d, b"..").await, libc::ENOTEMPTY);
        v.rmdir(&root, parent, b"sub").await.expect("rmdir an empty directory");
        assert_errno!(v.getattr(&root, d).await, libc::ENOENT);
        v.rmdir(&root, Ino::ROOT, b"d").await.expect("rmdir once emptied");
        assert_eq!(t.ls("/").await, ["file"]);
    }

    async fn symlink_keeps_its_target_bytes(t: TestVolume) {
        let root = Caller::root();
        let v = &t.volume;
        // Targets are bytes: not normalised, not required to exist or to be UTF-8.
        let target: &[u8] = b"../some//where/\xff\xfe with spaces/";
        let link = v.symlink(&root, Ino::ROOT, b"l", target).await.expect("symlink");
        assert_eq!(link.kind, FileType::Symlink);
        assert_eq!(link.size, target.len() as u64, "a symlink's size is its target's length");
        assert_eq!(link.perm, 0o777);
        let seen = t.stat("/l").await;
        assert_eq!(seen.ino, link.ino);
        assert_eq!(v.readlink(&alice(), link.ino).await.expect("readlink"), target);
        let entry = t.readdir_all(Ino::ROOT).await.into_iter().find(|e| e.name == b"l").expect("listed");
        assert_eq!(entry.kind, FileType::Symlink);

        let longest = vec![b'x'; 4095];
        let long = v.symlink(&root, Ino::ROOT, b"long", &longest).await.expect("a 4095-byte target");
        assert_eq!(v.readlink(&root, long.ino).await.expect("readlink long"), longest);
        assert_errno!(v.symlink(&root, Ino::ROOT, b"too-long", &[b'x'; 4096]).await, libc::ENAMETOOLONG);
        assert_errno!(v.symlink(&root, Ino::ROOT, b"empty", b"").await, libc::ENOENT);
        assert_errno!(v.symlink(&root, Ino::ROOT, b"l", b"other").await, libc::EEXIST);
        assert_eq!(v.readlink(&root, link.ino).await.expect("readlink after EEXIST"), target);
    }

    async fn readlink_of_other_kinds_is_einval(t: TestVolume) {
        let root = Caller::root();
        let v = &t.volume;
        let file = t.write_file("/f", b"not a link").await;
        let dir = t.mkdir_p("/d").await;
        assert_errno!(v.readlink(&root, file.ino).await, libc::EINVAL);
        assert_errno!(v.readlink(&root, dir).await, libc::EINVAL);
    }

    async fn hard_links_share_one_inode(t: TestVolume) {
        let root = Caller::root();
        let v = &t.volume;
        let d = t.mkdir_p("/d").await;
        let f = t.write_file("/f", b"shared").await;
        let linked = v.link(&root, f.ino, d, b"g").await.expect("link");
        assert_eq!(linked.ino, f.ino);
        assert_eq!(linked.nlink, 2);
        assert_eq!(t.stat("/f").await.nlink, 2);
        assert_eq!(t.read_file("/d/g").await, b"shared");

        // A write through one name is read through the other.
        t.write_file("/d/g", b"changed").await;
        assert_eq!(t.read_file("/f").await, b"changed");

        v.link(&root, f.ino, Ino::ROOT, b"h").await.expect("third link");
        assert_eq!(t.stat("/h").await.nlink, 3);
        v.unlink(&root, Ino::ROOT, b"f").await.expect("unlink the first name");
        assert_eq!(t.stat("/d/g").await.nlink, 2);
        v.unlink(&root, Ino::ROOT, b"h").await.expect("unlink the third name");
        let last = t.stat("/d/g").await;
        assert_eq!(last.nlink, 1);
        assert_eq!(t.read_file("/d/g").await, b"changed", "the data lives while a name does");
        // Linking never adds to the directory's own link count.
        assert_eq!(t.stat("/d").await.nlink, 2);
    }

    async fn link_errors(t: TestVolume) {
        let root = Caller::root();
        let v = &t.volume;
        let d = t.mkdir_p("/d").await;
        let f = t.write_file("/f", b"").await;
        t.write_file("/other", b"").await;
        assert_errno!(v.link(&root, d, Ino::ROOT, b"dirlink").await, libc::EPERM);
        assert_errno!(v.link(&root, f.ino, Ino::ROOT, b"other").await, libc::EEXIST);
        assert_errno!(v.link(&root, f.ino, Ino::ROOT, b"d").await, libc::EEXIST);
        assert_errno!(v.link(&root, f.ino, f.ino, b"x").await, libc::ENOTDIR);
        assert_errno!(v.link(&alice(), f.ino, d, b"x").await, libc::EACCES);
        assert_eq!(t.stat("/f").await.nlink, 1, "failed links leave the count alone");
    }

    async fn rename_replaces_a_file(t: TestVolume) {
        let root = Caller::root();
        let v = &t.volume;
        let a = t.write_file("/a", b"new contents").await;
        let b = t.write_file("/b", b"old").await;
        v.rename(&root, Ino::ROOT, b"a", Ino::ROOT, b"b", PLAIN).await.expect("rename a b");
        assert_errno!(t.resolve("/a").await, libc::ENOENT);
        assert_eq!(t.ino("/b").await, a.ino);
        assert_eq!(t.read_file("/b").await, b"new contents");
        assert_eq!(t.ls("/").await, ["b"]);
        assert_errno!(v.getattr(&root, b.ino).await, libc::ENOENT);
        assert_eq!(t.usage().await.inodes, 2, "the replaced file is gone: root and b remain");

        // Into another directory under a new name.
        let d = t.mkdir_p("/d").await;
        v.rename(&root, Ino::ROOT, b"b", d, b"c", PLAIN).await.expect("rename b d/c");
        assert_eq!(t.read_file("/d/c").await, b"new contents");
        assert_eq!(t.ls("/").await, ["d"]);
        assert_errno!(v.rename(&root, Ino::ROOT, b"b", d, b"c", PLAIN).await, libc::ENOENT);
    }

    async fn rename_moves_a_directory_between_parents(t: TestVolume) {
        let root = Caller::root();
        let v = &t.volume;
        let moved = t.mkdir_p("/p1/d/inner").await;
        let d = t.ino("/p1/d").await;
        t.write_file("/p1/d/file", b"inside").await;
        let p1 = t.ino("/p1").await;
        let p2 = t.mkdir_p("/p2").await;
        assert_eq!((t.stat("/p1").await.nlink, t.stat("/p2").await.nlink), (3, 2));

        v.rename(&root, p1, b"d", p2, b"e", PLAIN).await.expect("rename p1/d p2/e");
        assert_errno!(t.resolve("/p1/d").await, libc::ENOENT);
        assert_eq!(t.ino("/p2/e").await, d);
        assert_eq!(v.lookup(&root, d, b"..").await.expect("lookup ..").ino, p2, "'..' follows the move");
        let dotdot = t.readdir_all(d).await.into_iter().find(|e| e.name == b"..").expect("'..' listed");
        assert_eq!(dotdot.ino, p2);
        assert_eq!(t.stat("/p1").await.nlink, 2, "the old parent lost the '..' link");
        assert_eq!(t.stat("/p2").await.nlink, 3, "the new parent gained it");
        assert_eq!(t.stat("/p2/e").await.nlink, 3, "the moved directory keeps its own links");
        assert_eq!(t.ino("/p2/e/inner").await, moved);
        assert_eq!(t.read_file("/p2/e/file").await, b"inside");
    }

    async fn rename_checks_types_and_emptiness(t: TestVolume) {
        let root = Caller::root();
        let v = &t.volume;
        t.mkdir_p("/full/child").await;
        t.mkdir_p("/empty").await;
        t.mkdir_p("/dir").await;
        t.write_file("/file", b"f").await;
        assert_errno!(v.rename(&root, Ino::ROOT, b"file", Ino::ROOT, b"dir", PLAIN).await, libc::EISDIR);
        assert_errno!(v.rename(&root, Ino::ROOT, b"dir", Ino::ROOT, b"file", PLAIN).await, libc::ENOTDIR);
        assert_errno!(v.rename(&root, Ino::ROOT, b"dir", Ino::ROOT, b"full", PLAIN).await, libc::ENOTEMPTY);
        assert_errno!(v.rename(&root, Ino::ROOT, b"missing", Ino::ROOT, b"x", PLAIN).await, libc::ENOENT);
        assert_eq!(t.ls_sorted("/").await, ["dir", "empty", "file", "full"], "failed renames change nothing");
        assert_eq!(t.stat("/").await.nlink, 5, "three subdirectories");

        // A directory may replace an empty one; the parent loses the replaced one's link.
        let dir = t.ino("/dir").await;
        let empty = t.ino("/empty").await;
        v.rename(&root, Ino::ROOT, b"dir", Ino::ROOT, b"empty", PLAIN).await.expect("dir over an empty dir");
        assert_eq!(t.ino("/empty").await, dir);
        assert_errno!(v.getattr(&root, empty).await, libc::ENOENT);
        assert_eq!(t.stat("/").await.nlink, 4);
        assert_eq!(t.ls_sorted("/").await, ["empty", "file", "full"]);

        // Across parents: the source parent loses a link, the target parent gains one and loses
        // the replaced directory's.
        let child = t.ino("/full/child").await;
        v.rename(&root, t.ino("/full").await, b"child", Ino::ROOT, b"empty", PLAIN).await.expect("across parents");
        assert_eq!(t.ino("/empty").await, child);
        assert_eq!((t.stat("/").await.nlink, t.stat("/full").await.nlink), (4, 2));
        assert_eq!(v.lookup(&root, child, b"..").await.expect("lookup ..").ino, Ino::ROOT);
        // A directory cannot replace its own (non-empty) parent.
        t.mkdir_p("/empty/inner").await;
        let empty = t.ino("/empty").await;
        assert_errno!(v.rename(&root, empty, b"inner", Ino::ROOT, b"empty", PLAIN).await, libc::ENOTEMPTY);
    }

    async fn rename_refuses_to_move_a_directory_into_itself(t: TestVolume) {
        let root = Caller::root();
        let v = &t.volume;
        let c = t.mkdir_p("/a/b/c").await;
        let a = t.ino("/a").await;
        assert_errno!(v.rename(&root, Ino::ROOT, b"a", c, b"x", PLAIN).await, libc::EINVAL);
        assert_errno!(v.rename(&root, Ino::ROOT, b"a", a, b"x", PLAIN).await, libc::EINVAL);
        assert_errno!(v.rename(&root, Ino::ROOT, b"a", c, b"x", EXCHANGE).await, libc::ENOENT);
        t.mkdir_p("/a/b/c/x").await;
        assert_errno!(v.rename(&root, Ino::ROOT, b"a", c, b"x", EXCHANGE).await, libc::EINVAL);
        assert_eq!(t.ino("/a/b/c").await, c, "the tree is unchanged");
        assert_eq!(t.ls("/").await, ["a"]);
    }

    async fn rename_noreplace(t: TestVolume) {
        let root = Caller::root();
        let v = &t.volume;
        t.write_file("/a", b"a").await;
        t.write_file("/b", b"b").await;
        assert_errno!(v.rename(&root, Ino::ROOT, b"a", Ino::ROOT, b"b", NOREPLACE).await, libc::EEXIST);
        assert_eq!((t.read_file("/a").await, t.read_file("/b").await), (b"a".to_vec(), b"b".to_vec()));
        v.rename(&root, Ino::ROOT, b"a", Ino::ROOT, b"c", NOREPLACE).await.expect("to a free name");
        assert_eq!(t.ls_sorted("/").await, ["b", "c"]);
        let both = RenameFlags { no_replace: true, exchange: true };
        assert_errno!(v.rename(&root, Ino::ROOT, b"b", Ino::ROOT, b"c", both).await, libc::EINVAL);
    }

    async fn rename_exchange_swaps_a_file_and_a_directory(t: TestVolume) {
        let root = Caller::root();
        let v = &t.volume;
        let p1 = t.mkdir_p("/p1").await;
        let p2 = t.mkdir_p("/p2").await;
        let f = t.write_file("/p1/f", b"file data").await;
        let d = t.mkdir_p("/p2/d").await;
        t.write_file("/p2/d/child", b"child").await;

        v.rename(&root, p1, b"f", p2, b"d", EXCHANGE).await.expect("exchange");
        assert_eq!(t.ino("/p1/f").await, d);
        assert_eq!(t.stat("/p1/f").await.kind, FileType::Directory);
        assert_eq!(t.read_file("/p1/f/child").await, b"child");
        assert_eq!(t.ino("/p2/d").await, f.ino);
        assert_eq!(t.read_file("/p2/d").await, b"file data");
        assert_eq!(v.lookup(&root, d, b"..").await.expect("lookup ..").ino, p1, "the directory's '..' moved");
        assert_eq!(t.stat("/p1").await.nlink, 3, "p1 now holds the directory");
        assert_eq!(t.stat("/p2").await.nlink, 2, "p2 now holds the file");

        // Two directories across parents: link counts stay, both ".." move.
        let e = t.mkdir_p("/p2/e").await;
        v.rename(&root, p1, b"f", p2, b"e", EXCHANGE).await.expect("exchange two directories");
        assert_eq!((t.ino("/p1/f").await, t.ino("/p2/e").await), (e, d));
        assert_eq!(v.lookup(&root, e, b"..").await.expect("lookup ..").ino, p1);
        assert_eq!(v.lookup(&root, d, b"..").await.expect("lookup ..").ino, p2);
        assert_eq!((t.stat("/p1").await.nlink, t.stat("/p2").await.nlink), (3, 3));

        // Within one directory, two files.
        t.write_file("/x", b"x").await;
        t.write_file("/y", b"y").await;
        v.rename(&root, Ino::ROOT, b"x", Ino::ROOT, b"y", EXCHANGE).await.expect("exchange x y");
        assert_eq!((t.read_file("/x").await, t.read_file("/y").await), (b"y".to_vec(), b"x".to_vec()));
        assert_errno!(v.rename(&root, Ino::ROOT, b"x", Ino::ROOT, b"missing", EXCHANGE).await, libc::ENOENT);
    }

    async fn rename_onto_another_link_of_the_same_inode_does_nothing(t: TestVolume) {
        let root = Caller::root();
        let v = &t.volume;
        let f = t.write_file("/a", b"same").await;
        v.link(&root, f.ino, Ino::ROOT, b"b").await.expect("link");
        v.rename(&root, Ino::ROOT, b"a", Ino::ROOT, b"b", PLAIN).await.expect("rename onto a hard link");
        assert_eq!(t.ls_sorted("/").await, ["a", "b"], "both names remain");
        assert_eq!(t.stat("/a").await.nlink, 2);
        assert_eq!(t.read_file("/b").await, b"same");
        // And onto itself.
        v.rename(&root, Ino::ROOT, b"a", Ino::ROOT, b"a", PLAIN).await.expect("rename onto itself");
        assert_eq!(t.ino("/a").await, f.ino);
    }

    async fn names_up_to_name_max(t: TestVolume) {
        let root = Caller::root();
        let v = &t.volume;
        let longest = vec![b'n'; 255];
        let too_long = vec![b'n'; 256];
        let (attr, fh) = v.create(&root, Ino::ROOT, &longest, 0o644, libc::O_WRONLY).await.expect("255-byte name");
        v.release(&root, fh).await.expect("release");
        assert_eq!(v.lookup(&root, Ino::ROOT, &longest).await.expect("lookup").ino, attr.ino);
        assert!(t.readdir_all(Ino::ROOT).await.iter().any(|e| e.name == longest));

        let too_long_ops = [
            v.create(&root, Ino::ROOT, &too_long, 0o644, libc::O_WRONLY).await.map(|_| ()),
            v.mkdir(&root, Ino::ROOT, &too_long, 0o755).await.map(|_| ()),
            v.mknod(&root, Ino::ROOT, &too_long, libc::S_IFIFO | 0o644, 0).await.map(|_| ()),
            v.symlink(&root, Ino::ROOT, &too_long, b"t").await.map(|_| ()),
            v.link(&root, attr.ino, Ino::ROOT, &too_long).await.map(|_| ()),
            v.rename(&root, Ino::ROOT, &longest, Ino::ROOT, &too_long, PLAIN).await,
            v.lookup(&root, Ino::ROOT, &too_long).await.map(|_| ()),
        ];
        for result in too_long_ops {
            assert_errno!(result, libc::ENAMETOOLONG);
        }
        assert_eq!(t.readdir_all(Ino::ROOT).await.len(), 3, ".., . and the 255-byte name only");
    }

    async fn slash_and_nul_are_not_allowed_in_names(t: TestVolume) {
        let root = Caller::root();
        let v = &t.volume;
        let f = t.write_file("/f", b"").await;
        for bad in [&b"a/b"[..], b"a\0b", b"/", b""] {
            assert_errno!(v.create(&root, Ino::ROOT, bad, 0o644, libc::O_WRONLY).await, libc::EINVAL);
            assert_errno!(v.mkdir(&root, Ino::ROOT, bad, 0o755).await, libc::EINVAL);
            assert_errno!(v.symlink(&root, Ino::ROOT, bad, b"t").await, libc::EINVAL);
            assert_errno!(v.link(&root, f.ino, Ino::ROOT, bad).await, libc::EINVAL);
            assert_errno!(v.rename(&root, Ino::ROOT, b"f", Ino::ROOT, bad, PLAIN).await, libc::EINVAL);
        }
        // Any other byte is fine, UTF-8 or not.
        for good in ["naïve 😀".as_bytes(), b"\xff\xfe\x01", b" leading space", b"-", b"..."] {
            v.mkdir(&root, Ino::ROOT, good, 0o755).await.expect("unusual but valid name");
            assert!(v.lookup(&root, Ino::ROOT, good).await.is_ok());
        }
        assert_eq!(t.readdir_all(Ino::ROOT).await.len(), 2 + 1 + 5);
    }

    async fn concurrent_creates_in_one_directory_all_land(t: TestVolume) {
        let root = Caller::root();
        let d = t.mkdir_p("/d").await;
        let mut tasks = Vec::new();
        for worker in 0..4 {
            let v = t.volume.clone();
            let root = root.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..25 {
                    let name = format!("w{worker}-{i}");
                    v.mkdir(&root, d, name.as_bytes(), 0o755).await.expect("concurrent mkdir");
                }
            }));
        }
        for task in tasks {
            task.await.expect("worker panicked");
        }
        let names = t.ls_sorted("/d").await;
        assert_eq!(names.len(), 100);
        assert_eq!(t.stat("/d").await.nlink, 102, "every subdirectory counted exactly once");
    }

    async fn concurrent_exclusive_creates_of_one_name_have_one_winner(t: TestVolume) {
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let v = t.volume.clone();
            tasks.push(tokio::spawn(async move {
                let root = Caller::root();
                let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
                match v.create(&root, Ino::ROOT, b"lock", 0o644, flags).await {
                    Ok((_, fh)) => {
                        v.release(&root, fh).await.expect("release");
                        true
                    }
                    Err(e) => {
                        assert_eq!(e.errno(), libc::EEXIST, "losers see EEXIST, got {e:?}");
                        false
                    }
                }
            }));
        }
        let mut winners = 0;
        for task in tasks {
            winners += usize::from(task.await.expect("task panicked"));
        }
        assert_eq!(winners, 1);
        assert_eq!(t.ls("/").await, ["lock"]);
        assert_eq!(t.usage().await.inodes, 2, "losers leave no inode behind");
    }
}
