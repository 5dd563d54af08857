//! Pod-level access policy: rules, order and defaults decide every operation family exactly as
//! the policy says; squashing sets the owner of what a pod creates; denials are audited with
//! their pod and rule; `/.tarbox` commands and snapshots follow the same policy; a running volume
//! follows a change. Every test runs against every backend.

use std::sync::Arc;
use std::time::Duration;

use tarbox_fs::Filesystem as _;
use tarbox_fs::audit::{AuditFilter, ResultFilter};
use tarbox_fs::{
    AuditLevel, AuditOp, Caller, ControlFs, FileType, Ino, PodIdentity, RenameFlags, SetAttr,
    Volume, VolumeOptions, XattrMode,
};
use tarbox_tests::{TestVolume, assert_errno, backend_tests, names_as};

const POLICY: &str = r#"
[defaults]
pods = "none"
no_pod = "write"

[[rules]]
name = "trainers own their checkpoints"
namespace = "ml"
service_account = "trainer"
paths = ["/checkpoints/{pod}"]
access = "write"

[[rules]]
name = "evaluators read checkpoints"
service_account = "eval"
paths = ["/checkpoints"]
access = "read"

[[rules]]
name = "no one reads the keys"
paths = ["/datasets/keys"]
access = "none"

[[rules]]
name = "datasets are read-only"
paths = ["/datasets"]
access = "read"

[[rules]]
name = "scratch"
paths = ["/scratch"]
access = "write"

[[rules]]
name = "trainers are uid 1000"
service_account = "trainer"
squash = "all"
uid = 1000
gid = 1000

[[rules]]
name = "root is nobody"
squash = "root"
"#;

fn pod(namespace: &str, name: &str, sa: &str, uid: u32) -> Caller {
    Caller {
        pid: 77,
        pod: Some(Arc::new(PodIdentity {
            namespace: namespace.into(),
            name: name.into(),
            service_account: sa.into(),
        })),
        ..Caller::new(uid, uid)
    }
}

/// Root in the trainer pod `job-a`.
fn trainer() -> Caller {
    pod("ml", "job-a", "trainer", 0)
}

/// Root in an evaluation pod.
fn evaluator() -> Caller {
    pod("ml", "eval-0", "eval", 0)
}

/// The tree the tests work on, made by a caller without a pod, then `policy` set and a fresh
/// volume (at the standard audit level) that has it in force.
async fn with_policy(t: &TestVolume, policy: &str) -> Volume {
    for dir in [
        "/datasets",
        "/datasets/keys",
        "/checkpoints",
        "/checkpoints/job-a",
    ] {
        t.mkdir_mode(dir, 0o777).await;
    }
    t.mkdir_mode("/checkpoints/job-b", 0o777).await;
    t.mkdir_mode("/scratch", 0o777).await;
    t.mkdir_mode("/private", 0o777).await;
    t.write_file("/datasets/train.csv", b"1,2,3\n").await;
    t.write_file("/datasets/keys/key", b"secret").await;
    t.write_file("/checkpoints/job-b/step-1", b"b's weights")
        .await;
    t.write_file("/scratch/notes", b"notes").await;
    t.engine
        .set_access_policy(&t.tenant, Some(policy), &Caller::root())
        .await
        .expect("set policy");
    let options = VolumeOptions {
        audit_level: Some(AuditLevel::Standard),
        ..VolumeOptions::default()
    };
    t.engine
        .volume_with(&t.tenant, options)
        .await
        .expect("volume")
}

/// Look `path` up from the root as `caller`.
async fn resolve(v: &Volume, caller: &Caller, path: &str) -> tarbox_fs::FsResult<Ino> {
    let mut ino = Ino::ROOT;
    for name in path.split('/').filter(|n| !n.is_empty()) {
        ino = v.lookup(caller, ino, name.as_bytes()).await?.ino;
    }
    Ok(ino)
}

async fn dir(v: &Volume, path: &str) -> Ino {
    resolve(v, &Caller::root(), path).await.expect(path)
}

/// The names `caller` sees listed in `path`.
async fn listing(v: &Volume, caller: &Caller, path: &str) -> Vec<String> {
    names_as(v, caller, dir(v, path).await).await
}

fn ctl(v: &Volume) -> ControlFs {
    ControlFs::new(v.clone())
}

backend_tests! {
    async fn a_read_grant_refuses_every_change_with_erofs(t: TestVolume) {
        let v = with_policy(&t, POLICY).await;
        let who = trainer();
        let data = dir(&v, "/datasets").await;
        let csv = resolve(&v, &who, "/datasets/train.csv").await.expect("a pod may look up data");
        // Reading is granted.
        let fh = v.open(&who, csv, libc::O_RDONLY).await.expect("open for reading");
        assert_eq!(&v.read(&who, fh, 0, 64).await.expect("read")[..], b"1,2,3\n");
        v.release(&who, fh).await.expect("release");
        assert_errno!(v.getxattr(&who, csv, b"user.x").await, libc::ENODATA);
        v.access(&who, csv, libc::R_OK as u32).await.expect("access(R_OK)");
        // Every change is refused as on a read-only mount, and changes nothing.
        assert_errno!(v.open(&who, csv, libc::O_WRONLY).await, libc::EROFS);
        assert_errno!(v.open(&who, csv, libc::O_RDONLY | libc::O_TRUNC).await, libc::EROFS);
        assert_errno!(v.access(&who, csv, libc::W_OK as u32).await, libc::EROFS);
        let truncate = SetAttr { size: Some(0), ..SetAttr::default() };
        assert_errno!(v.setattr(&who, csv, &truncate).await, libc::EROFS);
        let chmod = SetAttr { mode: Some(0o600), ..SetAttr::default() };
        assert_errno!(v.setattr(&who, csv, &chmod).await, libc::EROFS);
        assert_errno!(v.setxattr(&who, csv, b"user.x", b"1", XattrMode::Any).await, libc::EROFS);
        assert_errno!(v.removexattr(&who, csv, b"user.x").await, libc::EROFS);
        assert_errno!(v.unlink(&who, data, b"train.csv").await, libc::EROFS);
        assert_errno!(v.create(&who, data, b"new.csv", 0o644, libc::O_WRONLY).await, libc::EROFS);
        assert_errno!(v.mknod(&who, data, b"fifo", libc::S_IFIFO | 0o644, 0).await, libc::EROFS);
        assert_errno!(v.symlink(&who, data, b"link", b"train.csv").await, libc::EROFS);
        assert_errno!(v.mkdir(&who, data, b"sub", 0o755).await, libc::EROFS);
        // The keys below are refused outright, which is EACCES.
        assert_errno!(v.rmdir(&who, data, b"keys").await, libc::EACCES);
        // Creating a name that exists says so first, as a read-only mount does (`mkdir -p`).
        assert_errno!(v.mkdir(&who, data, b"train.csv", 0o755).await, libc::EEXIST);
        assert_errno!(v.mkdir(&who, Ino::ROOT, b"datasets", 0o755).await, libc::EEXIST);
        assert_eq!(t.read_file("/datasets/train.csv").await, b"1,2,3\n");
        assert_eq!(t.ls("/datasets").await, vec!["keys", "train.csv"]);
    }

    async fn paths_without_a_grant_are_refused_and_hidden(t: TestVolume) {
        let v = with_policy(&t, POLICY).await;
        let who = trainer();
        // A trainer reaches its own checkpoints and the directories above them, not another's.
        resolve(&v, &who, "/checkpoints/job-a").await.expect("own checkpoints");
        assert_errno!(resolve(&v, &who, "/checkpoints/job-b").await, libc::EACCES);
        assert_errno!(resolve(&v, &who, "/private").await, libc::EACCES);
        assert_errno!(resolve(&v, &who, "/datasets/keys").await, libc::EACCES);
        let job_b = dir(&v, "/checkpoints/job-b").await;
        assert_errno!(v.getattr(&who, job_b).await, libc::EACCES);
        assert_errno!(v.open(&who, dir(&v, "/checkpoints/job-b/step-1").await, libc::O_RDONLY).await, libc::EACCES);
        let fh = v.opendir(&Caller::root(), job_b).await.expect("opendir");
        assert_errno!(v.readdir(&who, job_b, fh, 0).await, libc::EACCES);
        v.releasedir(&Caller::root(), fh).await.expect("releasedir");
        // The directories above a grant can be listed; what the caller cannot reach is left out.
        assert_eq!(listing(&v, &who, "/").await, vec!["checkpoints", "datasets", "scratch"]);
        assert_eq!(listing(&v, &who, "/checkpoints").await, vec!["job-a"]);
        assert_eq!(listing(&v, &who, "/datasets").await, vec!["train.csv"]);
        // ...but not changed.
        let checkpoints = dir(&v, "/checkpoints").await;
        assert_errno!(v.mkdir(&who, checkpoints, b"job-c", 0o755).await, libc::EACCES);
        let chmod = SetAttr { mode: Some(0o700), ..SetAttr::default() };
        assert_errno!(v.setattr(&who, checkpoints, &chmod).await, libc::EACCES);
        // A caller without a pod is governed by its own default: here, everything.
        assert_eq!(listing(&v, &Caller::root(), "/checkpoints").await, vec!["job-a", "job-b"]);
        resolve(&v, &Caller::root(), "/private").await.expect("no pod, no restriction");
        // Another service account gets what its rules say: evaluators read all checkpoints.
        let eval = evaluator();
        assert_eq!(listing(&v, &eval, "/checkpoints").await, vec!["job-a", "job-b"]);
        let step = resolve(&v, &eval, "/checkpoints/job-b/step-1").await.expect("eval reads");
        assert_errno!(v.open(&eval, step, libc::O_WRONLY).await, libc::EROFS);
        resolve(&v, &eval, "/scratch/notes").await.expect("scratch is for every pod");
    }

    async fn moves_and_links_need_the_grant_on_both_sides(t: TestVolume) {
        let v = with_policy(&t, POLICY).await;
        let who = trainer();
        let (data, scratch, mine) = (
            dir(&v, "/datasets").await,
            dir(&v, "/scratch").await,
            dir(&v, "/checkpoints/job-a").await,
        );
        let none = RenameFlags::default();
        // Out of, or into, a read-only place: refused.
        assert_errno!(v.rename(&who, data, b"train.csv", scratch, b"t.csv", none).await, libc::EROFS);
        assert_errno!(v.rename(&who, scratch, b"notes", data, b"notes", none).await, libc::EROFS);
        // Into a place without a grant: refused.
        let job_b = dir(&v, "/checkpoints/job-b").await;
        assert_errno!(v.rename(&who, scratch, b"notes", job_b, b"notes", none).await, libc::EACCES);
        // A hard link would be a second, writable name of read-only data: refused.
        let csv = dir(&v, "/datasets/train.csv").await;
        assert_errno!(v.link(&who, csv, scratch, b"csv-link").await, libc::EROFS);
        // Between two writable places: done.
        v.rename(&who, scratch, b"notes", mine, b"notes", none).await.expect("rename");
        assert_eq!(t.read_file("/checkpoints/job-a/notes").await, b"notes");
        let notes = dir(&v, "/checkpoints/job-a/notes").await;
        v.link(&who, notes, scratch, b"notes-link").await.expect("link");
        assert_eq!(t.ls("/datasets").await, vec!["keys", "train.csv"]);
    }

    async fn a_directory_holding_a_rules_path_cannot_be_moved_by_a_pod(t: TestVolume) {
        let policy = "[defaults]\npods = \"write\"\n[[rules]]\npaths = [\"/shared/datasets\"]\naccess = \"read\"\n";
        let v = with_policy(&t, policy).await;
        let root = Caller::root();
        let shared = v.mkdir(&root, Ino::ROOT, b"shared", 0o777).await.expect("mkdir").ino;
        v.mkdir(&root, shared, b"datasets", 0o777).await.expect("mkdir");
        v.mknod(&root, shared, b"notes", libc::S_IFREG | 0o666, 0).await.expect("mknod");
        let who = trainer();
        let none = RenameFlags::default();
        // Moving `/shared` would carry `/shared/datasets` out of its rule: EXDEV (`mv` copies).
        assert_errno!(v.rename(&who, Ino::ROOT, b"shared", Ino::ROOT, b"shared2", none).await, libc::EXDEV);
        assert_errno!(v.rename(&who, shared, b"datasets", shared, b"data2", none).await, libc::EROFS);
        // A file beside it moves; a caller without a pod moves anything.
        v.rename(&who, shared, b"notes", shared, b"notes2", none).await.expect("rename a file");
        v.rename(&root, Ino::ROOT, b"shared", Ino::ROOT, b"shared2", none).await.expect("no pod");
    }

    async fn squashed_callers_create_files_as_the_mapped_identity(t: TestVolume) {
        let v = with_policy(&t, POLICY).await;
        let mine = dir(&v, "/checkpoints/job-a").await;
        // Trainers (root or not) are all uid 1000 (the first squash rule that selects them).
        let (attr, fh) = v.create(&trainer(), mine, b"step-1", 0o644, libc::O_WRONLY).await.expect("create");
        v.write(&trainer(), fh, 0, b"weights").await.expect("write");
        v.release(&trainer(), fh).await.expect("release");
        assert_eq!((attr.uid, attr.gid), (1000, 1000));
        let user = pod("ml", "job-a", "trainer", 4242);
        let made = v.mkdir(&user, mine, b"logs", 0o755).await.expect("mkdir");
        assert_eq!((made.uid, made.gid), (1000, 1000));
        // Root in any other pod is nobody: it cannot chown, or write where only root may.
        let scratch = dir(&v, "/scratch").await;
        let other_root = pod("web", "frontend", "default", 0);
        let made = v.mkdir(&other_root, scratch, b"tmp", 0o755).await.expect("mkdir");
        assert_eq!((made.uid, made.gid), (65_534, 65_534));
        let chown = SetAttr { uid: Some(0), ..SetAttr::default() };
        assert_errno!(v.setattr(&other_root, made.ino, &chown).await, libc::EPERM);
        // A non-root caller of that pod keeps its identity.
        let other_user = pod("web", "frontend", "default", 33);
        let made = v.mkdir(&other_user, scratch, b"www", 0o755).await.expect("mkdir");
        assert_eq!((made.uid, made.gid), (33, 33));
        // Without a pod nothing is mapped.
        let made = v.mkdir(&Caller::root(), scratch, b"admin", 0o755).await.expect("mkdir");
        assert_eq!((made.uid, made.gid), (0, 0));
    }

    async fn denials_are_audited_with_pod_and_rule(t: TestVolume) {
        let v = with_policy(&t, POLICY).await;
        let data = dir(&v, "/datasets").await;
        assert_errno!(v.unlink(&trainer(), data, b"train.csv").await, libc::EROFS);
        assert_errno!(resolve(&v, &evaluator(), "/private").await, libc::EACCES);
        t.engine.flush_audit().await;
        let denied = t
            .engine
            .audit_query(&AuditFilter {
                tenant: Some(t.tenant.clone()),
                result: Some(ResultFilter::Denied),
                ..AuditFilter::default()
            })
            .await
            .expect("query");
        let rows: Vec<_> = denied
            .iter()
            .map(|e| {
                (
                    e.op,
                    e.path.as_deref().unwrap_or_default().to_string(),
                    e.pod.as_ref().map(|p| p.name.clone()).unwrap_or_default(),
                    e.detail.as_deref().unwrap_or_default().to_string(),
                    e.errno,
                )
            })
            .collect();
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!((rows[0].0, rows[0].1.as_str(), rows[0].2.as_str()), (AuditOp::Unlink, "/datasets/train.csv", "job-a"));
        assert!(rows[0].3.contains("rule \"datasets are read-only\""), "{rows:?}");
        assert_eq!(rows[0].4, libc::EROFS);
        assert_eq!((rows[1].0, rows[1].1.as_str(), rows[1].2.as_str()), (AuditOp::Lookup, "/private", "eval-0"));
        assert!(rows[1].3.contains("the default for pods"), "{rows:?}");
        // Setting the policy is on record too.
        let set = t
            .engine
            .audit_query(&AuditFilter {
                tenant: Some(t.tenant.clone()),
                ops: vec![AuditOp::SetPolicy],
                ..AuditFilter::default()
            })
            .await
            .expect("query");
        assert_eq!(set.len(), 1);
        assert!(set[0].detail.as_deref().unwrap_or_default().contains("7 rules"), "{set:?}");
    }

    async fn control_files_and_snapshots_follow_the_policy(t: TestVolume) {
        let policy = r#"
[defaults]
pods = "read"

[[rules]]
name = "ops take checkpoints"
service_account = "ops"
paths = ["/.tarbox/layers", "/scratch"]
access = "write"

[[rules]]
name = "private"
paths = ["/private"]
access = "none"
"#;
        let v = with_policy(&t, policy).await;
        t.write_file("/private/plan", b"plan").await;
        let fs = ctl(&v);
        let ops = pod("infra", "ops-0", "ops", 0);
        let reader = pod("ml", "reader-0", "default", 0);
        let control = fs.lookup(&ops, Ino::ROOT, b".tarbox").await.expect(".tarbox").ino;
        let layers = fs.lookup(&ops, control, b"layers").await.expect("layers").ino;
        let new = fs.lookup(&ops, layers, b"new").await.expect("new").ino;
        // The reader may read `/.tarbox` but not take a checkpoint.
        assert_errno!(fs.open(&reader, new, libc::O_WRONLY).await, libc::EROFS);
        let fh = fs.open(&ops, new, libc::O_WRONLY).await.expect("ops opens layers/new");
        fs.write(&ops, fh, 0, b"before-eval").await.expect("checkpoint");
        fs.release(&ops, fh).await.expect("release");
        let tree = t.volume.layers().tree().await.expect("tree");
        assert!(tree.find(&tarbox_fs::LayerRef::Name("before-eval".into())).is_some());
        // `/.tarbox/policy` shows the policy, read-only.
        let file = fs.lookup(&reader, control, b"policy").await.expect("policy file");
        assert_eq!(file.kind, FileType::Regular);
        assert_eq!(file.perm & 0o222, 0);
        let fh = fs.open(&reader, file.ino, libc::O_RDONLY).await.expect("open policy");
        let text = fs.read(&reader, fh, 0, 4096).await.expect("read policy");
        fs.release(&reader, fh).await.expect("release");
        assert_eq!(&text[..], policy.as_bytes());
        assert_errno!(fs.open(&reader, file.ino, libc::O_WRONLY).await, libc::EACCES);
        // A checkpoint's tree is judged by the same paths as the live one.
        let snapshots = fs.lookup(&reader, control, b"snapshots").await.expect("snapshots").ino;
        let snap = fs.lookup(&reader, snapshots, b"before-eval").await.expect("snapshot").ino;
        fs.lookup(&reader, snap, b"datasets").await.expect("datasets in the snapshot");
        assert_errno!(fs.lookup(&reader, snap, b"private").await, libc::EACCES);
        fs.lookup(&Caller::root(), snap, b"private").await.expect("no pod, no restriction");
    }

    async fn a_deep_tree_is_judged_by_its_whole_path(t: TestVolume) {
        let policy = "[defaults]\npods = \"none\"\n[[rules]]\npaths = [\"/work/*\", \"/work/*/**\"]\naccess = \"write\"\n";
        let v = with_policy(&t, policy).await;
        let work = v.mkdir(&Caller::root(), Ino::ROOT, b"work", 0o777).await.expect("mkdir").ino;
        // Deeper than any one path string can name (as `mkdir -p` builds it, one level at a time).
        let mut dir = v.mkdir(&trainer(), work, b"run", 0o755).await.expect("mkdir").ino;
        for _ in 0..2100 {
            dir = v.mkdir(&trainer(), dir, b"d", 0o755).await.expect("mkdir deep").ino;
        }
        v.mknod(&trainer(), dir, b"leaf", libc::S_IFREG | 0o644, 0).await.expect("mknod deep");
        assert_errno!(v.mkdir(&trainer(), Ino::ROOT, b"elsewhere", 0o755).await, libc::EACCES);
    }

    async fn a_running_volume_follows_a_policy_change(t: TestVolume) {
        t.mkdir_mode("/datasets", 0o777).await;
        let v = t.volume.clone();
        let data = dir(&v, "/datasets").await;
        let who = trainer();
        v.mkdir(&who, data, b"before", 0o755).await.expect("no policy yet");
        let policy = "[[rules]]\npaths = [\"/datasets\"]\naccess = \"read\"\n";
        t.engine.set_access_policy(&t.tenant, Some(policy), &Caller::root()).await.expect("set");
        // The head watch picks it up (every 500 ms by default); give it ample time.
        let mut refused = false;
        for _ in 0..100 {
            match v.mkdir(&who, data, b"after", 0o755).await {
                Err(e) if e.errno() == libc::EROFS => {
                    refused = true;
                    break;
                }
                Ok(_) => {
                    v.rmdir(&Caller::root(), data, b"after").await.expect("rmdir");
                }
                Err(e) => panic!("mkdir: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(refused, "the running volume never applied the new policy");
        t.engine.set_access_policy(&t.tenant, None, &Caller::root()).await.expect("clear");
        let mut allowed = false;
        for _ in 0..100 {
            if v.mkdir(&who, data, b"again", 0o755).await.is_ok() {
                allowed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(allowed, "the running volume never dropped the removed policy");
        // A policy that does not parse is refused, and the stored one stays.
        let e = t.engine.set_access_policy(&t.tenant, Some("[[rules]]\naccess = 3\n"), &Caller::root()).await;
        assert_errno!(e, libc::EINVAL);
        assert!(t.engine.access_policy(&t.tenant).await.expect("read").is_none());
    }
}
