//! Tenants: names, creation, listing, deletion, isolation, and quotas (inode and byte) as users
//! see them: ENOSPC, usage never beyond the quota, statfs.

use tarbox_fs::Filesystem as _;
use tarbox_fs::{Caller, FileType, Ino, Quota, TenantOptions, TenantState, VolumeOptions};
use tarbox_tests::{TestVolume, assert_errno, backend_tests, unique_tenant_name};

const KIB: u64 = 1024;

/// A valid tenant name of exactly 253 characters (the DNS maximum) that starts with a unique label.
fn longest_name() -> String {
    let mut name = unique_tenant_name();
    // Labels are at most 63 characters: fill with full labels, then one shorter label, which
    // needs at least one character after its dot.
    while (253 - name.len()) % 64 == 1 {
        name.push('0');
    }
    while name.len() + 64 <= 253 {
        name.push('.');
        name.push_str(&"a".repeat(63));
    }
    let rest = 253 - name.len();
    if rest > 0 {
        name.push('.');
        name.push_str(&"b".repeat(rest - 1));
    }
    assert_eq!(name.len(), 253);
    name
}

fn options(block_size: u32, bytes: Option<u64>, inodes: Option<u64>) -> TenantOptions {
    TenantOptions {
        block_size,
        quota: Quota { bytes, inodes },
        ..TenantOptions::default()
    }
}

backend_tests! {
    async fn tenant_names_are_dns_names_up_to_253_characters(t: TestVolume) {
        let name = longest_name();
        let info = t.engine.create_tenant(&name, TenantOptions::default()).await.expect("a 253-character name");
        assert_eq!(info.name, name);
        let volume = t.engine.volume(&name).await.expect("volume of the long name");
        let root = Caller::root();
        volume.mkdir(&root, Ino::ROOT, b"works", 0o755).await.expect("mkdir");
        t.engine.delete_tenant(&name).await.expect("delete");

        let too_long = format!("{}.{}.{}.{}", "a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(62));
        assert_eq!(too_long.len(), 254);
        let label_64 = "a".repeat(64);
        let bad_names = [
            "", "UPPER", "under_score", "-leading", "trailing-", "a..b", ".a", "a.", "has space",
            "ünïcode", &label_64, &too_long,
        ];
        for bad in bad_names {
            let err = assert_errno!(t.engine.create_tenant(bad, TenantOptions::default()).await, libc::EINVAL);
            let message = err.to_string();
            assert!(message.contains(&format!("{bad:?}")), "the message names {bad:?}: {message}");
        }
        let names: Vec<String> = t.engine.list_tenants().await.expect("list").into_iter().map(|i| i.name).collect();
        assert!(!names.iter().any(|n| n == "UPPER"), "invalid names are never created");
    }

    async fn tenant_creation_options_and_duplicates(t: TestVolume) {
        let name = unique_tenant_name();
        let opts = TenantOptions {
            root_uid: 1000,
            root_gid: 3000,
            root_mode: 0o2770,
            ..options(16 * KIB as u32, Some(10 << 20), Some(1000))
        };
        let info = t.engine.create_tenant(&name, opts.clone()).await.expect("create");
        assert_eq!((info.block_size, info.quota.bytes, info.quota.inodes), (16384, Some(10 << 20), Some(1000)));
        assert_eq!(info.state, TenantState::Active);
        assert_eq!((info.usage.inodes, info.usage.bytes), (1, 0), "an empty root directory");

        let err = assert_errno!(t.engine.create_tenant(&name, TenantOptions::default()).await, libc::EEXIST);
        assert!(err.to_string().contains(&name), "{err}");
        // The failed duplicate changed nothing.
        assert_eq!(t.engine.tenant_info(&name).await.expect("info").block_size, 16384);

        let volume = t.engine.volume(&name).await.expect("volume");
        let root = volume.getattr(&Caller::root(), Ino::ROOT).await.expect("stat /");
        assert_eq!((root.kind, root.uid, root.gid, root.perm), (FileType::Directory, 1000, 3000, 0o2770));
        t.engine.delete_tenant(&name).await.expect("delete");

        for bad_block_size in [0, 2048, 3000, 8 << 20] {
            let bad = options(bad_block_size, None, None);
            assert_errno!(t.engine.create_tenant(&unique_tenant_name(), bad).await, libc::EINVAL);
        }
        assert_errno!(t.engine.tenant_info(&unique_tenant_name()).await, libc::ENOENT);
        assert_errno!(t.engine.volume(&unique_tenant_name()).await, libc::ENOENT);
    }

    async fn tenants_are_listed_with_their_usage(t: TestVolume) {
        let small = t.new_tenant(options(4096, Some(1 << 20), None)).await;
        small.write_file("/f", &[1; 5000]).await;
        let list = t.engine.list_tenants().await.expect("list");
        let names: Vec<&str> = list.iter().map(|i| i.name.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted, "sorted by name");
        let mine = list.iter().find(|i| i.name == t.tenant).expect("the test's tenant is listed");
        assert_eq!(mine.usage.inodes, 1);
        let other = list.iter().find(|i| i.name == small.tenant).expect("the second tenant is listed");
        assert_eq!((other.block_size, other.quota.bytes), (4096, Some(1 << 20)));
        assert_eq!(other.usage.inodes, 2);
        assert!(other.usage.bytes >= 5000);
        assert_eq!(t.engine.tenant_info(&small.tenant).await.expect("info").usage, other.usage);
    }

    async fn deleting_a_tenant_ends_access_to_it(t: TestVolume) {
        let root = Caller::root();
        let doomed = t.new_tenant(TenantOptions::default()).await;
        doomed.write_file("/f", b"doomed").await;
        t.write_file("/f", b"survivor").await;

        t.engine.delete_tenant(&doomed.tenant).await.expect("delete");
        assert_errno!(t.engine.volume(&doomed.tenant).await, libc::ENOENT);
        assert_errno!(doomed.volume.mkdir(&root, Ino::ROOT, b"late", 0o755).await, libc::ENOENT);
        assert_eq!(t.engine.tenant_info(&doomed.tenant).await.expect("info").state, TenantState::Deleted);
        let listed = t.engine.list_tenants().await.expect("list");
        let entry = listed.iter().find(|i| i.name == doomed.tenant).expect("listed until purged");
        assert_eq!(entry.state, TenantState::Deleted);
        assert_errno!(t.engine.create_tenant(&doomed.tenant, TenantOptions::default()).await, libc::EEXIST);
        assert_errno!(t.engine.set_quota(&doomed.tenant, Quota::default()).await, libc::ENOENT);

        let purged = t.engine.purge_deleted_tenants().await.expect("purge");
        assert!(purged.contains(&doomed.tenant), "purged {purged:?}");
        assert_errno!(t.engine.tenant_info(&doomed.tenant).await, libc::ENOENT);
        assert_errno!(t.engine.delete_tenant(&doomed.tenant).await, libc::ENOENT);
        // The name is free again, for an empty tenant.
        t.engine.create_tenant(&doomed.tenant, TenantOptions::default()).await.expect("recreate");
        let reborn = t.engine.volume(&doomed.tenant).await.expect("volume");
        assert_errno!(reborn.lookup(&root, Ino::ROOT, b"f").await, libc::ENOENT);
        t.engine.delete_tenant(&doomed.tenant).await.expect("delete again");

        assert_eq!(t.read_file("/f").await, b"survivor", "other tenants are untouched");
    }

    async fn tenants_never_see_each_others_files(t: TestVolume) {
        let other = t.new_tenant(TenantOptions::default()).await;
        t.mkdir_p("/a").await;
        other.mkdir_p("/a").await;
        t.write_file("/a/b", b"first tenant").await;
        other.write_file("/a/b", b"second tenant").await;
        t.write_file("/only-first", b"").await;
        other.volume.setxattr(&Caller::root(), other.ino("/a/b").await, b"user.k", b"2", tarbox_fs::XattrMode::Any)
            .await
            .expect("setxattr");

        assert_eq!(t.read_file("/a/b").await, b"first tenant");
        assert_eq!(other.read_file("/a/b").await, b"second tenant");
        assert_eq!(t.ls_sorted("/").await, ["a", "only-first"]);
        assert_eq!(other.ls_sorted("/").await, ["a"]);
        assert_errno!(other.resolve("/only-first").await, libc::ENOENT);
        assert_errno!(
            t.volume.getxattr(&Caller::root(), t.ino("/a/b").await, b"user.k").await,
            libc::ENODATA
        );
        // Identical content is not shared across tenants' visible state either.
        other.write_file("/same", b"identical bytes").await;
        t.write_file("/same", b"identical bytes").await;
        other.volume.unlink(&Caller::root(), Ino::ROOT, b"same").await.expect("unlink");
        assert_eq!(t.read_file("/same").await, b"identical bytes");
        assert_eq!(t.usage().await.inodes, 5);
        assert_eq!(other.usage().await.inodes, 3);

        // A read-only volume of a tenant sees its files and refuses changes.
        let read_only = VolumeOptions { read_only: true, ..VolumeOptions::default() };
        let ro = t.engine.volume_with(&t.tenant, read_only).await.expect("read-only volume");
        assert_errno!(ro.mkdir(&Caller::root(), Ino::ROOT, b"x", 0o755).await, libc::EROFS);
        assert!(ro.lookup(&Caller::root(), Ino::ROOT, b"only-first").await.is_ok());
    }

    async fn inode_quota_refuses_the_next_creation(t: TestVolume) {
        let s = t.new_tenant(options(4096, None, Some(5))).await;
        let root = Caller::root();
        let v = &s.volume;
        // The root directory is the first of the five inodes.
        s.write_file("/file", b"").await;
        let d = v.mkdir(&root, Ino::ROOT, b"dir", 0o755).await.expect("mkdir");
        v.symlink(&root, Ino::ROOT, b"link", b"file").await.expect("symlink");
        v.mknod(&root, d.ino, b"fifo", libc::S_IFIFO | 0o644, 0).await.expect("mknod");
        assert_eq!(s.usage().await.inodes, 5);

        assert_errno!(v.create(&root, Ino::ROOT, b"sixth", 0o644, libc::O_WRONLY).await, libc::ENOSPC);
        assert_errno!(v.mkdir(&root, Ino::ROOT, b"sixth", 0o755).await, libc::ENOSPC);
        assert_errno!(v.symlink(&root, Ino::ROOT, b"sixth", b"t").await, libc::ENOSPC);
        assert_errno!(v.mknod(&root, Ino::ROOT, b"sixth", libc::S_IFIFO | 0o644, 0).await, libc::ENOSPC);
        assert_errno!(s.resolve("/sixth").await, libc::ENOENT);
        assert_eq!(s.usage().await.inodes, 5, "refused creations leave nothing behind");
        assert_eq!(v.statfs(&root).await.expect("statfs").files_free, 0);
        // A hard link is a name, not an inode.
        v.link(&root, s.ino("/file").await, Ino::ROOT, b"hardlink").await.expect("link at the inode quota");

        v.unlink(&root, Ino::ROOT, b"link").await.expect("unlink");
        s.write_file("/sixth", b"fits now").await;
        assert_eq!(s.read_file("/sixth").await, b"fits now");

        // Raising the quota at run time applies at once.
        t.engine.set_quota(&s.tenant, Quota { bytes: None, inodes: Some(6) }).await.expect("set_quota");
        assert_eq!(v.statfs(&root).await.expect("statfs").files, 6);
        v.mkdir(&root, Ino::ROOT, b"seventh", 0o755).await.expect("mkdir under the raised quota");
        assert_errno!(v.mkdir(&root, Ino::ROOT, b"eighth", 0o755).await, libc::ENOSPC);
    }

    async fn byte_quota_refuses_writes_beyond_it(t: TestVolume) {
        let quota = 64 * KIB;
        let s = t.new_tenant(options(4096, Some(quota), None)).await;
        let root = Caller::root();
        let v = &s.volume;
        let (attr, fh) = v.create(&root, Ino::ROOT, b"f", 0o644, libc::O_RDWR).await.expect("create");

        // Append 4 KiB at a time until refused: exactly the quota fits.
        let chunk = vec![0x5A; 4096];
        let mut size = 0u64;
        loop {
            match v.write(&root, fh, size, &chunk).await {
                Ok(n) => size += u64::from(n),
                Err(e) => {
                    assert_eq!(e.errno(), libc::ENOSPC, "{e:?}");
                    break;
                }
            }
            assert!(s.usage().await.bytes <= quota, "usage beyond the quota");
            assert!(size <= quota, "accepted {size} bytes under a {quota}-byte quota");
        }
        assert_eq!(size, quota, "every byte up to the quota is usable");
        v.flush(&root, fh).await.expect("flush");
        assert_eq!(s.usage().await.bytes, quota);
        assert_errno!(v.write(&root, fh, quota, b"x").await, libc::ENOSPC);
        // A refused write leaves the file as it was; overwriting in place needs no space.
        assert_eq!(v.getattr(&root, attr.ino).await.expect("getattr").size, quota);
        v.write(&root, fh, 100, b"overwrite").await.expect("overwrite in place");
        v.release(&root, fh).await.expect("release");
        let mut want = vec![0x5A; quota as usize];
        want[100..109].copy_from_slice(b"overwrite");
        assert_eq!(s.read_file("/f").await, want);

        // Another file cannot grow either, and a large write fails as a whole.
        let (_, g) = v.create(&root, Ino::ROOT, b"g", 0o644, libc::O_WRONLY).await.expect("create at the byte quota");
        assert_errno!(v.write(&root, g, 0, b"y").await, libc::ENOSPC);
        assert_errno!(v.write(&root, g, 0, &vec![1; 100 * KIB as usize]).await, libc::ENOSPC);
        v.release(&root, g).await.expect("release");
        assert_eq!(s.stat("/g").await.size, 0);
        assert!(s.usage().await.bytes <= quota);

        // statfs shows a full volume; raising the quota at run time lets writes through.
        let st = v.statfs(&root).await.expect("statfs");
        assert_eq!((st.blocks * u64::from(st.block_size), st.blocks_free), (quota, 0));
        t.engine.set_quota(&s.tenant, Quota { bytes: Some(2 * quota), inodes: None }).await.expect("set_quota");
        let st = v.statfs(&root).await.expect("statfs");
        assert_eq!(st.blocks * u64::from(st.block_size), 2 * quota);
        assert_eq!(st.blocks_free * u64::from(st.block_size), quota);
        s.write_file("/g", &vec![2; 60 * KIB as usize]).await;
        assert!(s.usage().await.bytes <= 2 * quota);

        // Lowering it below the usage refuses growth but deletes nothing; shrinking still works.
        t.engine.set_quota(&s.tenant, Quota { bytes: Some(8 * KIB), inodes: None }).await.expect("set_quota");
        assert_eq!(s.read_file("/f").await, want);
        let fh = v.open(&root, attr.ino, libc::O_WRONLY).await.expect("open");
        assert_errno!(v.write(&root, fh, quota, b"x").await, libc::ENOSPC);
        v.release(&root, fh).await.expect("release");
        v.unlink(&root, Ino::ROOT, b"g").await.expect("unlink frees space");
        assert_eq!(s.usage().await.bytes, quota);

        // Without a byte quota anything goes.
        t.engine.set_quota(&s.tenant, Quota::default()).await.expect("set_quota");
        s.write_file("/big", &vec![3; 1 << 20]).await;
        assert_eq!(t.engine.tenant_info(&s.tenant).await.expect("info").quota, Quota::default());
    }

    async fn concurrent_writers_never_overshoot_the_byte_quota(t: TestVolume) {
        let quota = 64 * KIB;
        let s = t.new_tenant(options(4096, Some(quota), None)).await;
        let mut tasks = Vec::new();
        for worker in 0..4u8 {
            let v = s.volume.clone();
            tasks.push(tokio::spawn(async move {
                let root = Caller::root();
                let name = format!("w{worker}");
                let (_, fh) = v.create(&root, Ino::ROOT, name.as_bytes(), 0o644, libc::O_WRONLY).await.expect("create");
                let mut written = 0u64;
                loop {
                    match v.write(&root, fh, written, &[worker + 1; 3000]).await {
                        Ok(n) => written += u64::from(n),
                        Err(e) => {
                            assert_eq!(e.errno(), libc::ENOSPC, "{e:?}");
                            break;
                        }
                    }
                }
                v.release(&root, fh).await.expect("release");
                (worker, written)
            }));
        }
        let mut total = 0;
        let mut accepted = Vec::new();
        for task in tasks {
            let (worker, written) = task.await.expect("writer panicked");
            total += written;
            accepted.push((worker, written));
        }
        let usage = s.usage().await;
        assert!(usage.bytes <= quota, "usage {} beyond quota {quota}", usage.bytes);
        assert!(total <= quota, "{total} bytes accepted under a {quota}-byte quota");
        // Every accepted write is there, and nothing else.
        for (worker, written) in accepted {
            let data = s.read_file(&format!("/w{worker}")).await;
            assert_eq!(data.len() as u64, written, "worker {worker}'s file holds what was accepted");
            assert!(data.iter().all(|&b| b == worker + 1), "worker {worker}'s file holds only its bytes");
        }
    }
}
