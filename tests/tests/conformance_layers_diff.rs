//! Copy-on-write layers: diffs between layers (each kind of change, text edge cases, metadata,
//! branches).

mod layers_common;

use tarbox_fs::Filesystem as _;
use tarbox_fs::LayerRef;
use tarbox_fs::{Caller, ChangeKind, ContentDiff, FileType, Ino, LayerDiff, Timestamp};
use tarbox_tests::{TestVolume, assert_errno, backend_tests, noise};

use layers_common::{
    checkpoint, id_ref, rename, set_mtime, set_xattr, switch, symlink, travel, unlink,
};

fn text(change: &tarbox_fs::Change) -> (usize, usize, &str) {
    match &change.content {
        Some(ContentDiff::Text {
            added_lines,
            removed_lines,
            unified,
        }) => (*added_lines, *removed_lines, unified.as_str()),
        other => panic!("{}: expected a text diff, got {other:?}", change.path),
    }
}

fn change<'d>(diff: &'d LayerDiff, path: &str) -> &'d tarbox_fs::Change {
    diff.changes
        .iter()
        .find(|c| c.path == path)
        .unwrap_or_else(|| panic!("no change at {path} in {:#?}", diff.changes))
}

fn kinds(diff: &LayerDiff) -> Vec<(ChangeKind, String)> {
    diff.changes
        .iter()
        .map(|c| (c.kind, c.path.clone()))
        .collect()
}

backend_tests! {
    async fn diff_reports_each_kind_of_change(t: TestVolume) {
        t.write_file("/mod.txt", b"a\nb\nc\n").await;
        t.write_file("/del.txt", b"gone\n").await;
        t.write_file("/ren-old.txt", b"same content\n").await;
        t.write_file("/script.sh", b"#!/bin/sh\n").await;
        t.write_file("/same.txt", b"untouched\n").await;
        t.write_file("/editor.txt", b"one\ntwo\nthree\n").await;
        t.write_file("/crlf.txt", b"x\r\ny\r\n").await;
        let mut bin = noise(5000, 1);
        bin[0] = 0;
        t.write_file("/bin.dat", &bin).await;
        t.mkdir_p("/olddir").await;
        t.write_file("/olddir/inside", b"i\n").await;
        checkpoint(&t, "c").await;
        assert!(t.volume.layers().diff_current().await.expect("diff").changes.is_empty(), "nothing changed yet");

        t.write_file("/mod.txt", b"a\nB\nc\nd\n").await;
        unlink(&t, "/del.txt").await;
        rename(&t, "/ren-old.txt", "/ren-new.txt").await;
        t.chmod("/script.sh", 0o755).await;
        let mut bin2 = noise(7000, 2);
        bin2[10] = 0;
        t.write_file("/bin.dat", &bin2).await;
        t.write_file("/new.txt", b"hello\n").await;
        t.mkdir_p("/newdir").await;
        t.write_file("/newdir/file", b"f\n").await;
        // Editor-style save: a new file renamed over the original.
        t.write_file("/.editor.txt.swp", b"one\n2\nthree\n").await;
        rename(&t, "/.editor.txt.swp", "/editor.txt").await;
        t.write_file("/crlf.txt", b"x\r\nz\r\n").await;
        unlink(&t, "/olddir/inside").await;
        t.volume.rmdir(&Caller::root(), Ino::ROOT, b"olddir").await.expect("rmdir");

        let head = id_ref(t.volume.layers().current());
        let diff = t.volume.layers().diff(&LayerRef::from("c"), &LayerRef::from(&head)).await.expect("diff");
        assert_eq!(diff, t.volume.layers().diff_current().await.expect("diff_current"));
        assert!(diff.from.starts_with("c (#"), "{}", diff.from);
        assert_eq!(diff.to, head);
        assert_eq!(kinds(&diff), expect_kinds(&[
            (ChangeKind::Modified, "/bin.dat"),
            (ChangeKind::Modified, "/crlf.txt"),
            (ChangeKind::Deleted, "/del.txt"),
            (ChangeKind::Modified, "/editor.txt"),
            (ChangeKind::Modified, "/mod.txt"),
            (ChangeKind::Added, "/new.txt"),
            (ChangeKind::Added, "/newdir"),
            (ChangeKind::Added, "/newdir/file"),
            (ChangeKind::Deleted, "/olddir"),
            (ChangeKind::Deleted, "/olddir/inside"),
            (ChangeKind::Renamed, "/ren-new.txt"),
            (ChangeKind::Metadata, "/script.sh"),
        ]), "{}", diff.render());

        let m = change(&diff, "/mod.txt");
        let (added, removed, unified) = text(m);
        assert_eq!((added, removed), (2, 1), "{unified}");
        assert!(unified.contains("--- a/mod.txt") && unified.contains("+++ b/mod.txt"), "{unified}");
        for line in ["-b\n", "+B\n", "+d\n", " a\n", " c\n"] {
            assert!(unified.lines().any(|l| format!("{l}\n") == line), "{line:?} missing from\n{unified}");
        }
        assert_eq!((m.old_size, m.new_size), (Some(6), Some(8)));
        assert!(m.metadata.is_empty(), "{:?}", m.metadata);
        assert_eq!(m.file_type, FileType::Regular);

        let (added, removed, unified) = text(change(&diff, "/crlf.txt"));
        assert_eq!((added, removed), (1, 1));
        assert!(unified.contains("-y\r\n") && unified.contains("+z\r\n"), "{unified:?}");

        let e = change(&diff, "/editor.txt");
        assert_eq!(e.old_path, None, "an editor's save is a modification in place");
        let (added, removed, unified) = text(e);
        assert_eq!((added, removed), (1, 1));
        assert!(unified.contains("-two\n") && unified.contains("+2\n"), "{unified}");

        let r = change(&diff, "/ren-new.txt");
        assert_eq!(r.old_path.as_deref(), Some("/ren-old.txt"));
        assert_eq!(r.content, None, "renamed without a content change");
        assert_eq!((r.old_size, r.new_size), (Some(13), Some(13)));

        let meta = change(&diff, "/script.sh");
        assert_eq!(meta.metadata, ["mode 644 -> 755"]);
        assert_eq!(meta.content, None);

        let b = change(&diff, "/bin.dat");
        assert_eq!(b.content, Some(ContentDiff::Binary { old_size: 5000, new_size: 7000 }));
        assert_eq!((b.old_size, b.new_size), (Some(5000), Some(7000)));

        let d = change(&diff, "/del.txt");
        assert_eq!((d.old_size, d.new_size, d.content.as_ref()), (Some(5), None, None));
        let a = change(&diff, "/new.txt");
        assert_eq!((a.old_size, a.new_size, a.content.as_ref()), (None, Some(6), None));
        assert_eq!(change(&diff, "/newdir").file_type, FileType::Directory);
        assert_eq!(change(&diff, "/olddir").file_type, FileType::Directory);

        let rendered = diff.render();
        for line in [
            "M /mod.txt (+2 -1)",
            "R /ren-old.txt -> /ren-new.txt",
            "D /del.txt",
            "A /newdir/",
            "D /olddir/",
            "m /script.sh (mode 644 -> 755)",
            "M /bin.dat (binary, 5000 -> 7000 bytes)",
        ] {
            assert!(rendered.lines().any(|l| l == line), "{line:?} missing from\n{rendered}");
        }
        assert!(rendered.starts_with(&format!("# changes from {} to {head}\n", diff.from)), "{rendered}");
        assert!(rendered.contains("--- a/mod.txt"), "{rendered}");

        // The other way round, additions and deletions swap.
        let back = t.volume.layers().diff(&LayerRef::from(&head), &LayerRef::from("c")).await.expect("reverse diff");
        assert_eq!(kinds(&back), expect_kinds(&[
            (ChangeKind::Modified, "/bin.dat"),
            (ChangeKind::Modified, "/crlf.txt"),
            (ChangeKind::Added, "/del.txt"),
            (ChangeKind::Modified, "/editor.txt"),
            (ChangeKind::Modified, "/mod.txt"),
            (ChangeKind::Deleted, "/new.txt"),
            (ChangeKind::Deleted, "/newdir"),
            (ChangeKind::Deleted, "/newdir/file"),
            (ChangeKind::Added, "/olddir"),
            (ChangeKind::Added, "/olddir/inside"),
            (ChangeKind::Renamed, "/ren-old.txt"),
            (ChangeKind::Metadata, "/script.sh"),
        ]), "{}", back.render());
        assert_eq!(text(change(&back, "/mod.txt")).0, 1);
        assert_eq!(text(change(&back, "/mod.txt")).1, 2);
        assert_eq!(change(&back, "/ren-old.txt").old_path.as_deref(), Some("/ren-new.txt"));
        assert_eq!(change(&back, "/script.sh").metadata, ["mode 755 -> 644"]);

        assert!(t.volume.layers().diff(&LayerRef::from("c"), &LayerRef::from("c")).await.expect("diff").changes.is_empty());
        assert!(t.volume.layers().diff(&LayerRef::from(&head), &LayerRef::from(&head)).await.expect("diff").changes.is_empty());
        assert_errno!(t.volume.layers().diff(&LayerRef::from("c"), &LayerRef::from("nope")).await, libc::ENOENT);
        assert_errno!(t.volume.layers().diff(&LayerRef::from("nope"), &LayerRef::from("c")).await, libc::ENOENT);

        // Right after a checkpoint the current layer holds nothing.
        checkpoint(&t, "d").await;
        let empty = t.volume.layers().diff_current().await.expect("diff_current");
        assert!(empty.changes.is_empty(), "{}", empty.render());
        let named = t.volume.layers().diff(&LayerRef::from("c"), &LayerRef::from("d")).await.expect("diff");
        assert_eq!(named.to, format!("d ({head})"));
        assert_eq!(named.changes, diff.changes, "the head, now checkpoint d, holds the same changes");
    }

    async fn diff_of_text_edge_cases_and_metadata(t: TestVolume) {
        t.write_file("/no-newline", b"last line").await;
        t.write_file("/lone", b"\n").await;
        t.write_file("/latin1", b"caf\xe9\n").await;
        t.write_file("/empty", b"").await;
        t.write_file("/owned", b"o\n").await;
        t.write_file("/xattr", b"x\n").await;
        t.write_file("/touched", b"t\n").await;
        t.write_file("/retyped", b"file\n").await;
        symlink(&t, "/link", "old-target").await;
        checkpoint(&t, "c").await;

        t.write_file("/no-newline", b"last line\n").await;
        t.write_file("/lone", b"").await;
        t.write_file("/latin1", b"caf\xe9\nna\xefve\n").await;
        t.write_file("/empty", b"now\nthree\nlines\n").await;
        t.chown("/owned", 1000, 1000).await;
        set_xattr(&t, "/xattr", "user.k", b"v").await;
        set_mtime(&t, "/touched", Timestamp(5)).await;
        unlink(&t, "/retyped").await;
        t.mkdir_p("/retyped").await;
        unlink(&t, "/link").await;
        symlink(&t, "/link", "new-target").await;

        let diff = t.volume.layers().diff_current().await.expect("diff");
        let (added, removed, unified) = text(change(&diff, "/no-newline"));
        assert_eq!((added, removed), (1, 1), "{unified}");
        assert!(unified.contains("-last line") && unified.contains("+last line\n"), "{unified}");
        let (added, removed, _) = text(change(&diff, "/lone"));
        assert_eq!((added, removed), (0, 1));
        let (added, removed, unified) = text(change(&diff, "/latin1"));
        assert_eq!((added, removed), (1, 0), "{unified}");
        let (added, removed, _) = text(change(&diff, "/empty"));
        assert_eq!((added, removed), (3, 0));
        let owned = change(&diff, "/owned");
        assert_eq!((owned.kind, owned.metadata.clone()), (ChangeKind::Metadata, vec!["owner 0:0 -> 1000:1000".to_owned()]));
        let x = change(&diff, "/xattr");
        assert_eq!((x.kind, x.metadata.clone()), (ChangeKind::Metadata, vec!["xattrs".to_owned()]));
        let touched = change(&diff, "/touched");
        assert_eq!((touched.kind, touched.metadata.clone()), (ChangeKind::Metadata, vec!["mtime".to_owned()]));
        // A file replaced by a directory of the same name: the file deleted, the directory added.
        let retyped: Vec<_> = diff
            .changes
            .iter()
            .filter(|c| c.path == "/retyped")
            .map(|c| (c.kind, c.file_type))
            .collect();
        assert_eq!(
            retyped,
            [(ChangeKind::Deleted, FileType::Regular), (ChangeKind::Added, FileType::Directory)],
            "{}",
            diff.render()
        );
        let link = change(&diff, "/link");
        assert_eq!(link.kind, ChangeKind::Modified);
        assert_eq!(link.file_type, FileType::Symlink);
        let (added, removed, unified) = text(link);
        assert_eq!((added, removed), (1, 1));
        assert!(unified.contains("-old-target") && unified.contains("+new-target"), "{unified}");
    }

    async fn diff_follows_branches(t: TestVolume) {
        t.write_file("/f", b"1\n").await;
        t.write_file("/common", b"c\n").await;
        checkpoint(&t, "c").await;
        t.write_file("/f", b"2\n").await;
        t.write_file("/main-only", b"m\n").await;
        let main = id_ref(t.volume.layers().current());
        switch(&t, "c").await;
        let current = t.volume.layers().diff_current().await.expect("diff_current");
        assert!(current.changes.is_empty(), "a fresh switch changes nothing yet: {}", current.render());
        t.write_file("/f", b"3\n").await;
        t.write_file("/branch-only", b"b\n").await;
        let branch = id_ref(t.volume.layers().current());
        assert_eq!(kinds(&t.volume.layers().diff_current().await.expect("diff_current")), expect_kinds(&[
            (ChangeKind::Added, "/branch-only"),
            (ChangeKind::Modified, "/f"),
        ]));
        let across = t.volume.layers().diff(&LayerRef::from(&main), &LayerRef::from(&branch)).await.expect("diff across branches");
        assert_eq!(kinds(&across), expect_kinds(&[
            (ChangeKind::Added, "/branch-only"),
            (ChangeKind::Modified, "/f"),
            (ChangeKind::Deleted, "/main-only"),
        ]), "{}", across.render());
        let (_, _, unified) = text(change(&across, "/f"));
        assert!(unified.contains("-2\n") && unified.contains("+3\n"), "{unified}");
        // Diffs read the layers, not the volume's view: a time-travel view gives the same.
        let view = travel(&t, "c").await;
        assert_eq!(view.layers().diff(&LayerRef::from(&main), &LayerRef::from(&branch)).await.expect("diff"), across);
    }

}

fn expect_kinds(list: &[(ChangeKind, &str)]) -> Vec<(ChangeKind, String)> {
    list.iter().map(|(k, p)| (*k, (*p).to_owned())).collect()
}
