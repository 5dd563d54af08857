//! File data: open and create flags, read and write at any offset, sparse files, truncate,
//! fsync/flush/release, fallocate, and files unlinked while open.
//!
//! Tests that need many blocks use a tenant with 4 KiB blocks so block boundaries are cheap to
//! cross. Expected results are those of Linux on ext4/tmpfs.

use tarbox_fs::Filesystem as _;
use tarbox_fs::{
    Caller, Engine, EngineConfig, FallocateMode, FileHandle, Ino, SetAttr, TenantOptions,
};
use tarbox_tests::{TestVolume, alice, assert_errno, backend_tests, bob, noise, now, small_blocks};

const BS: usize = 4096;

/// Open an existing path as `caller`.
async fn open(t: &TestVolume, caller: &Caller, path: &str, flags: i32) -> FileHandle {
    let ino = t.ino(path).await;
    t.volume
        .open(caller, ino, flags)
        .await
        .unwrap_or_else(|e| panic!("open {path} with flags {flags:#o}: {e}"))
}

/// Write all of `data` at `offset` through a handle.
async fn pwrite(t: &TestVolume, fh: FileHandle, offset: u64, data: &[u8]) {
    let n = t
        .volume
        .write(&Caller::root(), fh, offset, data)
        .await
        .unwrap_or_else(|e| panic!("write {} bytes at {offset}: {e}", data.len()));
    assert_eq!(n as usize, data.len(), "short write at {offset}");
}

async fn pread(t: &TestVolume, fh: FileHandle, offset: u64, size: u32) -> Vec<u8> {
    t.volume
        .read(&Caller::root(), fh, offset, size)
        .await
        .unwrap_or_else(|e| panic!("read {size} bytes at {offset}: {e}"))
        .to_vec()
}

async fn release(t: &TestVolume, fh: FileHandle) {
    t.volume
        .release(&Caller::root(), fh)
        .await
        .expect("release");
}

async fn set_size(t: &TestVolume, ino: Ino, size: u64, handle: Option<FileHandle>) {
    let set = SetAttr {
        size: Some(size),
        handle,
        ..SetAttr::default()
    };
    t.volume
        .setattr(&Caller::root(), ino, &set)
        .await
        .unwrap_or_else(|e| panic!("truncate to {size}: {e}"));
}

fn fallocate_mode(keep_size: bool, punch_hole: bool, zero_range: bool) -> FallocateMode {
    FallocateMode {
        keep_size,
        punch_hole,
        zero_range,
    }
}

backend_tests! {
    async fn create_exclusive_and_existing(t: TestVolume) {
        let root = Caller::root();
        let v = &t.volume;
        let excl = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
        let (attr, fh) = v.create(&root, Ino::ROOT, b"f", 0o640, excl).await.expect("create");
        assert_eq!(attr.perm, 0o640);
        assert_eq!(attr.size, 0);
        pwrite(&t, fh, 0, b"kept").await;
        release(&t, fh).await;
        assert_errno!(v.create(&root, Ino::ROOT, b"f", 0o644, excl).await, libc::EEXIST);

        // Without O_EXCL the existing file is opened as is.
        let (again, fh) = v.create(&root, Ino::ROOT, b"f", 0o600, libc::O_RDWR | libc::O_CREAT).await.expect("reopen");
        assert_eq!(again.ino, attr.ino);
        assert_eq!(again.perm, 0o640, "the mode of an existing file is not changed");
        assert_eq!(pread(&t, fh, 0, 100).await, b"kept");
        release(&t, fh).await;

        // With O_TRUNC it is emptied.
        let trunc = libc::O_WRONLY | libc::O_TRUNC;
        let (_, fh) = v.create(&root, Ino::ROOT, b"f", 0o600, trunc).await.expect("create O_TRUNC");
        assert_eq!(v.getattr(&root, attr.ino).await.expect("getattr").size, 0);
        release(&t, fh).await;
        assert_eq!(t.read_file("/f").await, b"");

        // O_EXCL refuses any existing name, a dangling symlink included.
        v.symlink(&root, Ino::ROOT, b"dangling", b"nowhere").await.expect("symlink");
        assert_errno!(v.create(&root, Ino::ROOT, b"dangling", 0o644, excl).await, libc::EEXIST);

        t.mkdir_p("/d").await;
        assert_errno!(v.create(&root, Ino::ROOT, b"d", 0o644, libc::O_WRONLY).await, libc::EISDIR);
        assert_errno!(v.create(&root, Ino::ROOT, b"d", 0o644, excl).await, libc::EEXIST);
    }

    async fn open_with_o_trunc_empties_the_file(t: TestVolume) {
        let root = Caller::root();
        let f = t.write_file("/f", &[7u8; 5000]).await;
        assert_eq!(f.size, 5000);
        let fh = open(&t, &root, "/f", libc::O_WRONLY | libc::O_TRUNC).await;
        assert_eq!(t.stat("/f").await.size, 0, "emptied at open, before any write");
        pwrite(&t, fh, 0, b"new").await;
        release(&t, fh).await;
        assert_eq!(t.read_file("/f").await, b"new");
        // O_TRUNC needs write permission even with O_RDONLY.
        assert_errno!(t.volume.open(&bob(), f.ino, libc::O_RDONLY | libc::O_TRUNC).await, libc::EACCES);
        assert_eq!(t.read_file("/f").await, b"new");

        // O_TRUNC marks the file modified even when it was already empty.
        let empty = t.write_file("/empty", b"").await;
        let old = tarbox_fs::Timestamp(1_000);
        let set = SetAttr { mtime: Some(tarbox_fs::TimeSet::At(old)), ..SetAttr::default() };
        t.volume.setattr(&root, empty.ino, &set).await.expect("age");
        let fh = open(&t, &root, "/empty", libc::O_WRONLY | libc::O_TRUNC).await;
        release(&t, fh).await;
        assert!(t.stat("/empty").await.mtime > old, "O_TRUNC updates mtime");
    }

    async fn o_append_writes_at_the_end(t: TestVolume) {
        let root = Caller::root();
        t.write_file("/log", b"hello").await;
        let fh = open(&t, &root, "/log", libc::O_WRONLY | libc::O_APPEND).await;
        pwrite(&t, fh, 0, b" world").await;
        pwrite(&t, fh, 0, b"!").await;
        // Another handle appending in between: appends go after it too.
        let other = open(&t, &root, "/log", libc::O_WRONLY).await;
        pwrite(&t, other, 12, b"?").await;
        release(&t, other).await;
        pwrite(&t, fh, 3, b".").await;
        release(&t, fh).await;
        assert_eq!(t.read_file("/log").await, b"hello world!?.");
    }

    async fn open_checks_the_mode(t: TestVolume) {
        let v = &t.volume;
        t.mkdir_mode("/w", 0o777).await;
        let f = t.write_file_as(&alice(), "/w/f", b"secret", 0o600).await.expect("alice writes");
        assert_errno!(v.open(&bob(), f.ino, libc::O_RDONLY).await, libc::EACCES);
        assert_errno!(v.open(&bob(), f.ino, libc::O_WRONLY).await, libc::EACCES);
        t.chmod("/w/f", 0o400).await;
        let fh = v.open(&alice(), f.ino, libc::O_RDONLY).await.expect("owner reads a 0400 file");
        v.release(&alice(), fh).await.expect("release");
        assert_errno!(v.open(&alice(), f.ino, libc::O_WRONLY).await, libc::EACCES);
        assert_errno!(v.open(&alice(), f.ino, libc::O_RDWR).await, libc::EACCES);
        // Root reads and writes regardless of the mode.
        t.chmod("/w/f", 0o000).await;
        let fh = v.open(&Caller::root(), f.ino, libc::O_RDWR).await.expect("root opens a 0000 file");
        release(&t, fh).await;
        let d = t.ino("/w").await;
        assert_errno!(v.open(&Caller::root(), d, libc::O_WRONLY).await, libc::EISDIR);
    }

    async fn the_creator_may_write_a_file_it_created_without_permissions(t: TestVolume) {
        let v = &t.volume;
        let a = alice();
        let w = t.mkdir_mode("/w", 0o777).await;
        let (attr, fh) = v.create(&a, w, b"z", 0o000, libc::O_RDWR | libc::O_CREAT).await.expect("create mode 0");
        assert_eq!(attr.perm, 0);
        assert_eq!(v.write(&a, fh, 0, b"mine").await.expect("write through the creating handle"), 4);
        assert_eq!(&v.read(&a, fh, 0, 10).await.expect("read it back")[..], b"mine");
        v.release(&a, fh).await.expect("release");
        // A later open is checked against the mode again.
        assert_errno!(v.open(&a, attr.ino, libc::O_RDONLY).await, libc::EACCES);
        assert_eq!(t.read_file("/w/z").await, b"mine");
    }

    async fn handles_enforce_their_access_mode(t: TestVolume) {
        let root = Caller::root();
        let v = &t.volume;
        t.write_file("/f", b"data").await;
        let wo = open(&t, &root, "/f", libc::O_WRONLY).await;
        assert_errno!(v.read(&root, wo, 0, 10).await, libc::EBADF);
        let ro = open(&t, &root, "/f", libc::O_RDONLY).await;
        assert_errno!(v.write(&root, ro, 0, b"x").await, libc::EBADF);
        let fallocate = v.fallocate(&root, ro, 0, 10, fallocate_mode(false, false, false)).await;
        assert_errno!(fallocate, libc::EBADF);
        // Access is decided at open: a later chmod does not revoke a handle.
        let member = alice();
        t.chmod("/f", 0o666).await;
        let alices = open(&t, &member, "/f", libc::O_RDWR).await;
        t.chmod("/f", 0o000).await;
        assert_eq!(v.write(&member, alices, 0, b"D").await.expect("write after chmod 000"), 1);
        assert_eq!(&v.read(&member, alices, 0, 10).await.expect("read after chmod 000")[..], b"Data");
        v.release(&member, alices).await.expect("release");
        release(&t, wo).await;
        release(&t, ro).await;
        assert_errno!(v.read(&root, ro, 0, 10).await, libc::EBADF);
        assert_errno!(v.release(&root, ro).await, libc::EBADF);
        assert_errno!(v.write(&root, FileHandle(u64::MAX), 0, b"x").await, libc::EBADF);
        assert_eq!(t.read_file("/f").await, b"Data");
    }

    async fn sparse_files_read_zeros_in_their_holes(t: TestVolume) {
        let root = Caller::root();
        let (attr, fh) = t.volume.create(&root, Ino::ROOT, b"sparse", 0o644, libc::O_RDWR).await.expect("create");
        let far = (3 << 20) + 5;
        pwrite(&t, fh, far, b"end").await;
        pwrite(&t, fh, 10, b"start").await;
        assert_eq!(t.volume.getattr(&root, attr.ino).await.expect("getattr").size, far + 3);
        release(&t, fh).await;

        let data = t.read_file("/sparse").await;
        assert_eq!(data.len() as u64, far + 3);
        assert!(data[..10].iter().all(|&b| b == 0));
        assert_eq!(&data[10..15], b"start");
        assert!(data[15..far as usize].iter().all(|&b| b == 0), "the hole reads as zeros");
        assert_eq!(&data[far as usize..], b"end");
    }

    async fn rewriting_a_block_with_its_own_content_keeps_it(t: TestVolume) {
        let s = small_blocks(&t).await;
        let root = Caller::root();
        let data = noise(300, 9);
        s.write_file("/f", &data).await;
        // Zeros from inside block 0 on: block 0 is stored again with the content it has.
        let fh = open(&s, &root, "/f", libc::O_WRONLY).await;
        pwrite(&s, fh, (BS - 8) as u64, &[0; 100]).await;
        release(&s, fh).await;
        let mut want = data.clone();
        want.resize(BS + 92, 0);
        assert_eq!(s.read_file("/f").await, want);
        // Another engine on the same store, with nothing cached, reads what the store holds.
        let other = tarbox_fs::Engine::with_backend(s.engine.backend().clone(), tarbox_fs::EngineConfig::default())
            .await
            .expect("engine");
        let v = other.volume(&s.tenant).await.expect("volume");
        let fh = v.open(&root, s.ino("/f").await, libc::O_RDONLY).await.expect("open");
        assert_eq!(v.read(&root, fh, 0, 2 * BS as u32).await.expect("read block 0 from the store").to_vec(), want);
        v.release(&root, fh).await.expect("release");
        other.close().await.expect("close");
    }

    async fn writes_spanning_block_boundaries(t: TestVolume) {
        let s = small_blocks(&t).await;
        let root = Caller::root();
        let (_, fh) = s.volume.create(&root, Ino::ROOT, b"f", 0o644, libc::O_RDWR).await.expect("create");
        let mut model = vec![0u8; 4000];
        let first = noise(10_000, 1);
        pwrite(&s, fh, 4000, &first).await;
        model.extend_from_slice(&first);
        // Overwrite across the boundary between blocks 1 and 2, before and after a flush.
        pwrite(&s, fh, 8190, &[0xEE; 10]).await;
        model[8190..8200].fill(0xEE);
        s.volume.flush(&root, fh).await.expect("flush");
        pwrite(&s, fh, 4095, &[0x11; 2]).await;
        model[4095..4097].fill(0x11);
        assert_eq!(pread(&s, fh, 4090, 20).await, &model[4090..4110]);
        release(&s, fh).await;
        assert_eq!(s.read_file("/f").await, model);

        // Partial overwrites of stored blocks keep the bytes around them.
        let fh = open(&s, &root, "/f", libc::O_WRONLY).await;
        pwrite(&s, fh, 5000, b"0123456789").await;
        model[5000..5010].copy_from_slice(b"0123456789");
        release(&s, fh).await;
        let fresh = s.reopen().await;
        let ino = s.ino("/f").await;
        let fh = fresh.open(&root, ino, libc::O_RDONLY).await.expect("open in a fresh volume");
        let read = fresh.read(&root, fh, 0, 1 << 20).await.expect("read");
        assert_eq!(&read[..], &model[..]);
        fresh.release(&root, fh).await.expect("release");
    }

    async fn offsets_beyond_the_maximum_file_size_are_efbig(t: TestVolume) {
        let root = Caller::root();
        let v = &t.volume;
        // 16 TiB, ext4's limit with 4 KiB blocks.
        let max: u64 = 16 << 40;
        let (attr, fh) = v.create(&root, Ino::ROOT, b"f", 0o644, libc::O_RDWR).await.expect("create");
        assert_errno!(v.write(&root, fh, max - 1, b"xy").await, libc::EFBIG);
        assert_errno!(v.write(&root, fh, u64::MAX - 1, b"xy").await, libc::EFBIG);
        let too_big = SetAttr { size: Some(max + 1), ..SetAttr::default() };
        assert_errno!(v.setattr(&root, attr.ino, &too_big).await, libc::EFBIG);
        // Up to the limit is fine, and sparse.
        pwrite(&t, fh, max - 1, b"z").await;
        assert_eq!(pread(&t, fh, max - 1, 10).await, b"z");
        assert_eq!(pread(&t, fh, 1 << 40, 4).await, [0, 0, 0, 0]);
        release(&t, fh).await;
        assert_eq!(t.stat("/f").await.size, max);
    }

    async fn data_on_its_way_to_the_store_reads_back(t: TestVolume) {
        // More than two write buffers (16 MiB each): whole blocks leave the buffer in the
        // background and a later flush commits them; until then reads through any handle,
        // rewrites and SEEK_DATA see them.
        const MIB: usize = 1 << 20;
        let root = Caller::root();
        let mut data = noise(40 * MIB, 5);
        let (attr, fh) = t.volume.create(&root, Ino::ROOT, b"ckpt", 0o644, libc::O_RDWR).await.expect("create");
        for (i, chunk) in data.chunks(MIB).enumerate() {
            pwrite(&t, fh, (i * MIB) as u64, chunk).await;
        }
        let other = t.volume.open(&root, attr.ino, libc::O_RDONLY).await.expect("open");
        for (offset, len) in [(0, 100), (262_134, 20), (5 * MIB + 3, MIB), (17 * MIB, 70_000), (39 * MIB, MIB)] {
            let got = pread(&t, other, offset as u64, len as u32).await;
            assert!(got == data[offset..offset + len], "read of {len} at {offset}");
        }
        let patch = noise(4096, 6);
        pwrite(&t, fh, (3 * MIB + 100) as u64, &patch).await;
        data[3 * MIB + 100..3 * MIB + 100 + 4096].copy_from_slice(&patch);
        let got = pread(&t, other, (3 * MIB) as u64, 8192).await;
        assert!(got == data[3 * MIB..3 * MIB + 8192], "a rewritten block reads back");
        let next = t.volume.lseek(&root, other, 0, tarbox_fs::Whence::Data).await.expect("lseek");
        assert_eq!(next, 0);
        release(&t, other).await;
        release(&t, fh).await;
        let fresh = t.reopen().await;
        let fh = fresh.open(&root, attr.ino, libc::O_RDONLY).await.expect("open");
        let mut back = Vec::with_capacity(data.len());
        while back.len() < data.len() {
            let got = fresh.read(&root, fh, back.len() as u64, MIB as u32).await.expect("read");
            assert!(!got.is_empty(), "short at {}", back.len());
            back.extend_from_slice(&got);
        }
        fresh.release(&root, fh).await.expect("release");
        assert!(back == data, "the file reads back from a fresh volume");
    }

    async fn a_sequential_reader_sees_writes_made_ahead_of_it(t: TestVolume) {
        // A sequential reader gets blocks fetched ahead of it; a write (and flush) through
        // another handle to where it has not read yet must still show when it gets there.
        const MIB: usize = 1 << 20;
        let root = Caller::root();
        let mut data = noise(12 * MIB, 8);
        t.write_file("/seq", &data).await;
        let ino = t.ino("/seq").await;
        let reader = t.volume.open(&root, ino, libc::O_RDONLY).await.expect("open");
        let writer = t.volume.open(&root, ino, libc::O_WRONLY).await.expect("open");
        let mut back = Vec::with_capacity(data.len());
        for i in 0..12 {
            if i == 2 {
                let patch = noise(3 * MIB, 9);
                pwrite(&t, writer, (6 * MIB + 7) as u64, &patch).await;
                t.volume.fsync(&root, writer, false).await.expect("fsync");
                data[6 * MIB + 7..9 * MIB + 7].copy_from_slice(&patch);
            }
            back.extend(pread(&t, reader, (i * MIB) as u64, MIB as u32).await);
        }
        assert!(back == data, "the reader saw every write made ahead of it");
        release(&t, writer).await;
        release(&t, reader).await;
    }

    async fn a_file_of_many_blocks_reads_back_exactly(t: TestVolume) {
        let s = small_blocks(&t).await;
        let root = Caller::root();
        let data = noise(300 * BS + 123, 2);
        let (_, fh) = s.volume.create(&root, Ino::ROOT, b"big", 0o644, libc::O_WRONLY).await.expect("create");
        // Odd-sized chunks so that writes start and end inside blocks.
        for (i, chunk) in data.chunks(7919).enumerate() {
            pwrite(&s, fh, (i * 7919) as u64, chunk).await;
        }
        release(&s, fh).await;
        assert_eq!(s.stat("/big").await.size, data.len() as u64);
        let fresh = s.reopen().await;
        let ino = s.ino("/big").await;
        let fh = fresh.open(&root, ino, libc::O_RDONLY).await.expect("open");
        for (offset, len) in [(0usize, 1usize), (4095, 2), (BS * 17 + 5, BS * 3), (data.len() - 10, 100)] {
            let got = fresh.read(&root, fh, offset as u64, len as u32).await.expect("read");
            let end = (offset + len).min(data.len());
            assert_eq!(&got[..], &data[offset..end], "read of {len} at {offset}");
        }
        fresh.release(&root, fh).await.expect("release");
        assert!(s.read_file("/big").await == data, "whole file differs");
    }

    async fn every_byte_value_round_trips(t: TestVolume) {
        let s = small_blocks(&t).await;
        let all: Vec<u8> = (0..=255u8).collect();
        s.write_file("/bytes", &all).await;
        assert_eq!(s.read_file("/bytes").await, all);

        let cycled: Vec<u8> = (0..=255u8).cycle().take(3 * BS + 17).collect();
        s.write_file("/cycled", &cycled).await;
        assert_eq!(s.read_file("/cycled").await, cycled);

        // Trailing zeros are data, not padding: inside a block, at the end of a block followed by
        // more data, and a whole file of zeros.
        s.write_file("/zeros-at-end", b"abc\0\0\0").await;
        assert_eq!(s.read_file("/zeros-at-end").await, b"abc\0\0\0");
        let mut gap = vec![1u8; 100];
        gap.extend(vec![0u8; BS - 100]);
        gap.extend(vec![2u8; 10]);
        s.write_file("/gap", &gap).await;
        assert_eq!(s.read_file("/gap").await, gap);
        s.write_file("/all-zero", &vec![0u8; 10_000]).await;
        assert_eq!(s.stat("/all-zero").await.size, 10_000);
        assert_eq!(s.read_file("/all-zero").await, vec![0u8; 10_000]);

        // And through a fresh volume, which has nothing cached.
        let fresh = s.reopen().await;
        let root = Caller::root();
        let ino = s.ino("/cycled").await;
        let fh = fresh.open(&root, ino, libc::O_RDONLY).await.expect("open");
        assert_eq!(&fresh.read(&root, fh, 0, 1 << 20).await.expect("read")[..], &cycled[..]);
        fresh.release(&root, fh).await.expect("release");
    }

    async fn reads_see_every_completed_write(t: TestVolume) {
        let root = Caller::root();
        let (attr, writer) = t.volume.create(&root, Ino::ROOT, b"f", 0o644, libc::O_WRONLY).await.expect("create");
        pwrite(&t, writer, 0, b"buffered").await;
        // Another handle of the same volume sees the write before any flush.
        let reader = open(&t, &root, "/f", libc::O_RDONLY).await;
        assert_eq!(pread(&t, reader, 0, 100).await, b"buffered");
        assert_eq!(t.stat("/f").await.size, 8, "stat sees buffered growth");

        // After fsync another volume (another mount) sees it too.
        t.volume.fsync(&root, writer, false).await.expect("fsync");
        let other = t.reopen().await;
        let fh = other.open(&root, attr.ino, libc::O_RDONLY).await.expect("open in another volume");
        assert_eq!(&other.read(&root, fh, 0, 100).await.expect("read")[..], b"buffered");
        other.release(&root, fh).await.expect("release");

        pwrite(&t, writer, 8, b" then flushed").await;
        t.volume.flush(&root, writer).await.expect("flush");
        let fh = other.open(&root, attr.ino, libc::O_RDONLY).await.expect("reopen in another volume");
        assert_eq!(&other.read(&root, fh, 0, 100).await.expect("read")[..], b"buffered then flushed");
        other.release(&root, fh).await.expect("release");

        // Reads at and past the end, and of nothing.
        assert_eq!(pread(&t, reader, 21, 10).await, b"");
        assert_eq!(pread(&t, reader, 1000, 10).await, b"");
        assert_eq!(pread(&t, reader, 15, 100).await, b"lushed", "short only at end of file");
        assert_eq!(pread(&t, reader, 0, 0).await, b"");
        release(&t, reader).await;
        release(&t, writer).await;

        // A directory handle syncs trivially.
        let dh = t.volume.opendir(&root, Ino::ROOT).await.expect("opendir");
        t.volume.fsync(&root, dh, true).await.expect("fsync of a directory");
        t.volume.releasedir(&root, dh).await.expect("releasedir");
    }

    async fn truncate_down_then_up_reads_zeros(t: TestVolume) {
        let s = small_blocks(&t).await;
        let root = Caller::root();
        let f = s.write_file("/f", &[0xAB; 10_000]).await;

        // By path (no handle).
        set_size(&s, f.ino, 5000, None).await;
        assert_eq!(s.read_file("/f").await, vec![0xAB; 5000]);
        set_size(&s, f.ino, 12_000, None).await;
        let data = s.read_file("/f").await;
        assert_eq!(data.len(), 12_000);
        assert!(data[..5000].iter().all(|&b| b == 0xAB));
        assert!(data[5000..].iter().all(|&b| b == 0), "the cut tail must not come back");

        // To a block boundary and back.
        set_size(&s, f.ino, 4096, None).await;
        set_size(&s, f.ino, 9000, None).await;
        let data = s.read_file("/f").await;
        assert!(data[..4096].iter().all(|&b| b == 0xAB));
        assert!(data[4096..].iter().all(|&b| b == 0));

        // Through a handle with buffered writes.
        let fh = open(&s, &root, "/f", libc::O_RDWR).await;
        pwrite(&s, fh, 0, &[0xCD; 8000]).await;
        set_size(&s, f.ino, 3000, Some(fh)).await;
        assert_eq!(pread(&s, fh, 0, 10_000).await, vec![0xCD; 3000]);
        set_size(&s, f.ino, 6000, Some(fh)).await;
        let mut want = vec![0xCD; 3000];
        want.extend(vec![0; 3000]);
        assert_eq!(pread(&s, fh, 0, 10_000).await, want);
        pwrite(&s, fh, 5999, b"!").await;
        want[5999] = b'!';
        release(&s, fh).await;
        assert_eq!(s.read_file("/f").await, want);
        set_size(&s, f.ino, 0, None).await;
        assert_eq!(s.read_file("/f").await, b"");
        assert_eq!(s.stat("/f").await.size, 0);
    }

    async fn fallocate_modes(t: TestVolume) {
        let s = small_blocks(&t).await;
        let root = Caller::root();
        let v = &s.volume;
        let (attr, fh) = v.create(&root, Ino::ROOT, b"f", 0o644, libc::O_RDWR).await.expect("create");
        pwrite(&s, fh, 0, b"abc").await;

        v.fallocate(&root, fh, 0, 10_000, fallocate_mode(false, false, false)).await.expect("fallocate");
        assert_eq!(v.getattr(&root, attr.ino).await.expect("getattr").size, 10_000, "the default mode extends");
        let mut want = b"abc".to_vec();
        want.resize(10_000, 0);
        assert_eq!(pread(&s, fh, 0, 20_000).await, want);

        v.fallocate(&root, fh, 0, 50_000, fallocate_mode(true, false, false)).await.expect("KEEP_SIZE");
        assert_eq!(v.getattr(&root, attr.ino).await.expect("getattr").size, 10_000, "KEEP_SIZE keeps the size");
        v.fallocate(&root, fh, 100, 200, fallocate_mode(false, false, false)).await.expect("inside the file");
        assert_eq!(v.getattr(&root, attr.ino).await.expect("getattr").size, 10_000, "never shrinks");
        assert_eq!(pread(&s, fh, 0, 20_000).await, want, "allocation keeps the data");

        // Punch a hole across block boundaries in a file full of data.
        pwrite(&s, fh, 0, &[0x55; 12_000]).await;
        v.fallocate(&root, fh, 1000, 6000, fallocate_mode(true, true, false)).await.expect("PUNCH_HOLE");
        let mut want = vec![0x55; 12_000];
        want[1000..7000].fill(0);
        assert_eq!(pread(&s, fh, 0, 20_000).await, want);
        assert_eq!(v.getattr(&root, attr.ino).await.expect("getattr").size, 12_000);
        // A hole punched past the end changes nothing.
        v.fallocate(&root, fh, 20_000, 100, fallocate_mode(true, true, false)).await.expect("punch past EOF");
        assert_eq!(v.getattr(&root, attr.ino).await.expect("getattr").size, 12_000);

        // ZERO_RANGE without KEEP_SIZE zeroes and extends.
        v.fallocate(&root, fh, 11_000, 2000, fallocate_mode(false, false, true)).await.expect("ZERO_RANGE");
        want[11_000..].fill(0);
        want.resize(13_000, 0);
        assert_eq!(pread(&s, fh, 0, 20_000).await, want);

        assert_errno!(v.fallocate(&root, fh, 0, 0, fallocate_mode(false, false, false)).await, libc::EINVAL);
        assert_errno!(v.fallocate(&root, fh, 0, 10, fallocate_mode(false, true, false)).await, libc::EOPNOTSUPP);
        release(&s, fh).await;
        assert_eq!(s.read_file("/f").await, want);
    }

    async fn writes_update_mtime_and_reads_do_not(t: TestVolume) {
        let root = Caller::root();
        let f = t.write_file("/f", b"x").await;
        let old = tarbox_fs::Timestamp(1_000_000_000);
        let set = SetAttr {
            atime: Some(tarbox_fs::TimeSet::At(old)),
            mtime: Some(tarbox_fs::TimeSet::At(old)),
            ..SetAttr::default()
        };
        t.volume.setattr(&root, f.ino, &set).await.expect("set old times");
        let _ = t.read_file("/f").await;
        assert_eq!(t.stat("/f").await.mtime, old, "reading does not modify");

        let before = now();
        let fh = open(&t, &root, "/f", libc::O_WRONLY).await;
        pwrite(&t, fh, 1, b"y").await;
        release(&t, fh).await;
        let after = t.stat("/f").await;
        assert!(after.mtime >= before, "write sets mtime: {:?} < {before:?}", after.mtime);
        assert!(after.ctime >= before, "write sets ctime");
    }

    async fn a_file_unlinked_while_open_lives_until_released(t: TestVolume) {
        let root = Caller::root();
        let v = &t.volume;
        let baseline = t.usage().await;
        let (attr, fh) = v.create(&root, Ino::ROOT, b"f", 0o644, libc::O_RDWR).await.expect("create");
        pwrite(&t, fh, 0, &vec![b'h'; 20_000]).await;
        v.flush(&root, fh).await.expect("flush");
        let while_linked = t.usage().await;
        assert_eq!(while_linked.inodes, baseline.inodes + 1);
        assert!(while_linked.bytes >= baseline.bytes + 20_000, "usage counts the data: {while_linked:?}");

        v.unlink(&root, Ino::ROOT, b"f").await.expect("unlink while open");
        assert_errno!(t.resolve("/f").await, libc::ENOENT);
        assert!(t.ls("/").await.is_empty());
        assert_eq!(pread(&t, fh, 19_990, 100).await, vec![b'h'; 10], "still readable");
        pwrite(&t, fh, 20_000, b" and more").await;
        v.flush(&root, fh).await.expect("flush an unlinked file");
        assert_eq!(pread(&t, fh, 19_998, 100).await, b"hh and more", "still writable");
        let orphan = v.getattr(&root, attr.ino).await.expect("getattr of an open unlinked file");
        assert_eq!(orphan.nlink, 0);
        assert_eq!(orphan.size, 20_009);
        assert_eq!(t.usage().await.inodes, baseline.inodes + 1, "the space is held while open");
        assert_errno!(v.link(&root, attr.ino, Ino::ROOT, b"back").await, libc::ENOENT);

        // Two handles: the first release keeps it, the last frees it.
        let second = v.open(&root, attr.ino, libc::O_RDONLY).await.expect("open by inode while orphaned");
        release(&t, fh).await;
        assert_eq!(pread(&t, second, 0, 2).await, b"hh");
        release(&t, second).await;
        assert_errno!(v.getattr(&root, attr.ino).await, libc::ENOENT);
        assert_eq!(t.usage().await, baseline, "usage returns to what it was");
    }

    /// A program writing to 1,000 files at once, none closed, holds no more than the engine's
    /// bound on uncommitted data (`held_limit_bytes`), though each file's own buffer would allow
    /// far more; what it wrote is all there afterwards, and nothing stays held once closed.
    async fn many_files_written_at_once_stay_within_the_engine_bound(t: TestVolume) {
        let small = t.new_tenant(TenantOptions { block_size: 4096, ..TenantOptions::default() }).await;
        let limit = 1 << 20;
        let config = EngineConfig { held_limit_bytes: limit, ..EngineConfig::default() };
        let engine = Engine::with_backend(t.engine.backend().clone(), config).await.expect("engine");
        let v = engine.volume(&small.tenant).await.expect("volume");
        let root = Caller::root();
        let mut files = Vec::new();
        for i in 0..1000 {
            let (attr, fh) = v
                .create(&root, Ino::ROOT, format!("f{i}").as_bytes(), 0o644, libc::O_RDWR)
                .await
                .expect("create");
            files.push((attr.ino, fh));
        }
        let mut peak = 0;
        for round in 0..2u64 {
            for (i, (_, fh)) in files.iter().enumerate() {
                let data = noise(4096, i as u64 * 2 + round);
                v.write(&root, *fh, round * 4096, &data).await.expect("write");
                let held = engine.held_bytes();
                assert!(held <= limit, "{held} bytes held after writing f{i}, bound {limit}");
                peak = peak.max(held);
            }
        }
        // 8 MiB were written: the bound held them back, it did not write everything through.
        assert!(peak > limit / 2, "peak {peak}: buffering still happens under the bound");
        for (_, fh) in &files {
            v.release(&root, *fh).await.expect("release");
        }
        assert_eq!(engine.held_bytes(), 0, "closed files hold nothing");
        let fresh = small.reopen().await;
        for (i, (ino, _)) in files.iter().enumerate() {
            let fh = fresh.open(&root, *ino, libc::O_RDONLY).await.expect("open");
            let got = fresh.read(&root, fh, 0, 8192).await.expect("read");
            fresh.release(&root, fh).await.expect("release");
            let want = [noise(4096, i as u64 * 2), noise(4096, i as u64 * 2 + 1)].concat();
            assert!(got[..] == want[..], "f{i} differs");
        }
        engine.close().await.expect("close");
    }

    /// What the engine reports having stored (`Engine::data_written`, the measure of write
    /// amplification): whole blocks written in sequence are stored once each at their size; a
    /// small write into a stored block stores what was written and a small manifest (a patched
    /// block), until the block holds too many patches and is merged once.
    async fn data_written_counts_each_stored_block(t: TestVolume) {
        let root = Caller::root();
        let bs = t.engine.tenant_info(&t.tenant).await.expect("tenant info").block_size as u64;
        let before = t.engine.data_written();
        let (_, fh) = t.volume.create(&root, Ino::ROOT, b"f", 0o644, libc::O_RDWR).await.expect("create");
        pwrite(&t, fh, 0, &noise(4 * bs as usize, 7)).await;
        t.volume.fsync(&root, fh, false).await.expect("fsync");
        let sequential = t.engine.data_written();
        assert_eq!(sequential.blocks - before.blocks, 4, "four whole blocks stored");
        // Noise does not compress: each block is stored at its size.
        assert_eq!(sequential.bytes - before.bytes, 4 * bs);

        let mut model = noise(4 * bs as usize, 7);
        let mut write = |at: u64, data: Vec<u8>| {
            model[at as usize..at as usize + data.len()].copy_from_slice(&data);
            data
        };
        pwrite(&t, fh, bs + 100, &write(bs + 100, noise(4096, 8))).await;
        t.volume.fsync(&root, fh, false).await.expect("fsync");
        let small = t.engine.data_written();
        assert_eq!(small.blocks - sequential.blocks, 2, "the range written and a manifest");
        let cost = small.bytes - sequential.bytes;
        assert!((4096..4096 + 1024).contains(&cost), "a 4 KiB write stored {cost} bytes");

        // Small writes into one block, each made durable: each costs about what it wrote until
        // the block is merged (at most once here).
        for k in 0..20u64 {
            let at = 2 * bs + k * 8192;
            pwrite(&t, fh, at, &write(at, noise(4096, 100 + k))).await;
            t.volume.fsync(&root, fh, false).await.expect("fsync");
        }
        let many = t.engine.data_written();
        let cost = many.bytes - small.bytes;
        assert!(cost < 20 * (4096 + 1024) + bs, "20 small writes stored {cost} bytes");
        assert!(
            pread(&t, fh, 0, 4 * bs as u32).await == model,
            "the file reads back as written"
        );

        // Nothing written, nothing stored.
        t.volume.fsync(&root, fh, false).await.expect("fsync");
        release(&t, fh).await;
        assert_eq!(t.engine.data_written(), many);
        // And from a volume that never saw the writes.
        let fresh = t.reopen().await;
        let ino = t.resolve("/f").await.expect("resolve").ino;
        let fh = fresh.open(&root, ino, libc::O_RDONLY).await.expect("open");
        let got = fresh.read(&root, fh, 0, 4 * bs as u32).await.expect("read");
        fresh.release(&root, fh).await.expect("release");
        assert!(got[..] == model[..], "a fresh volume reads the file as written");
    }

    /// A patched block read together with the block it was written over, by an engine whose
    /// memory cache keeps nothing: the read completes with the right bytes (it once waited for
    /// the load it was itself doing).
    async fn a_patched_block_reads_with_its_base_through_a_cache_that_keeps_nothing(t: TestVolume) {
        let root = Caller::root();
        let bs = t.engine.tenant_info(&t.tenant).await.expect("info").block_size as usize;
        // Two equal blocks are one stored block: the second, patched, names the first as base.
        let block = noise(bs, 3);
        let mut want = [block.clone(), block].concat();
        t.write_file("/f", &want).await;
        let fh = open(&t, &root, "/f", libc::O_RDWR).await;
        pwrite(&t, fh, (bs + 100) as u64, b"patch").await;
        release(&t, fh).await;
        want[bs + 100..bs + 105].copy_from_slice(b"patch");
        let config = EngineConfig { block_cache_bytes: 0, ..EngineConfig::default() };
        let other = Engine::with_backend(t.engine.backend().clone(), config).await.expect("engine");
        let v = other.volume(&t.tenant).await.expect("volume");
        let fh = v.open(&root, t.ino("/f").await, libc::O_RDONLY).await.expect("open");
        let read = tokio::time::timeout(std::time::Duration::from_secs(30), v.read(&root, fh, 0, 2 * bs as u32))
            .await
            .expect("the read does not hang")
            .expect("read");
        assert!(read[..] == want[..], "both blocks read as written");
        v.release(&root, fh).await.expect("release");
        other.close().await.expect("close");
    }

    async fn a_file_replaced_by_rename_while_open_lives_until_released(t: TestVolume) {
        let root = Caller::root();
        let v = &t.volume;
        t.write_file("/victim", b"old data").await;
        let one_file = t.usage().await;
        t.write_file("/new", b"new data").await;
        let fh = open(&t, &root, "/victim", libc::O_RDONLY).await;
        v.rename(&root, Ino::ROOT, b"new", Ino::ROOT, b"victim", tarbox_fs::RenameFlags::default())
            .await
            .expect("rename over an open file");
        assert_eq!(t.read_file("/victim").await, b"new data");
        assert_eq!(pread(&t, fh, 0, 100).await, b"old data", "the open handle keeps the old file");
        assert_eq!(t.usage().await.inodes, one_file.inodes + 1, "the replaced file is held while open");
        release(&t, fh).await;
        // Both files have the same size, so one file's worth is what remains.
        assert_eq!(t.usage().await, one_file, "the replaced file is freed at release");
    }
}
