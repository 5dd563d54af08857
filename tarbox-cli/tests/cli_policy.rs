//! `tarbox policy` of the real binary against PostgreSQL: set, show, check (with its exit code
//! and explanation), a refused policy naming its line, the audit record of a change, and clear.
//! PostgreSQL is found as in `cli_fs.rs`.

mod common;

use common::Tenant;

const POLICY: &str = r#"[defaults]
pods = "none"

[[rules]]
name = "evaluators read checkpoints"
service_account = "eval"
paths = ["/checkpoints"]
access = "read"

[[rules]]
name = "root is nobody"
squash = "root"
"#;

/// Exit code, stdout and stderr of a command.
fn outcome(t: &Tenant, args: &[&str]) -> (i32, String, String) {
    let out = t.output(&mut t.command(args));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn policies_are_set_explained_refused_and_cleared() {
    let Some(t) = Tenant::new("policy") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("policy.toml");
    std::fs::write(&file, POLICY).expect("write policy");
    let file = file.to_str().expect("utf-8 path");

    let set = String::from_utf8(t.run(&["policy", "set", "-t", &t.name, file])).expect("utf-8");
    assert!(set.contains("2 rules"), "{set}");
    let shown = String::from_utf8(t.run(&["policy", "show", "-t", &t.name])).expect("utf-8");
    assert_eq!(shown, POLICY);
    let info = String::from_utf8(t.run(&["tenant", "info", &t.name])).expect("utf-8");
    assert!(info.contains("policy:      2 rules"), "{info}");

    // `check` explains the decision and exits 0 when allowed, 1 when refused.
    let check = |args: &[&str]| {
        let mut all = vec!["policy", "check", "-t", &t.name];
        all.extend_from_slice(args);
        outcome(&t, &all)
    };
    let (code, out, _) = check(&[
        "--pod",
        "ml/eval-0",
        "--sa",
        "eval",
        "/checkpoints/a",
        "read",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("allowed") && out.contains("\"evaluators read checkpoints\" (line 4)"),
        "{out}"
    );
    assert!(
        out.contains("root in this pod acts as uid 65534 gid 65534"),
        "{out}"
    );
    let (code, out, err) = check(&[
        "--pod",
        "ml/eval-0",
        "--sa",
        "eval",
        "/checkpoints/a",
        "write",
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("refused (EROFS)"), "{out}");
    let (code, out, _) = check(&["--pod", "ml/web", "/checkpoints/a", "read"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("refused (EACCES)") && out.contains("the default for pods"),
        "{out}"
    );
    let (code, out, _) = check(&["/checkpoints/a", "write"]);
    assert_eq!(code, 0, "a caller without a pod: {out}");
    let (code, _, err) = check(&["--pod", "nons", "/a", "read"]);
    assert_ne!(code, 0);
    assert!(err.contains("NAMESPACE/NAME"), "{err}");

    // A policy that cannot work is refused with its line; the stored one stays.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[rules]]\nname = \"x\"\n\n[[rules]]\nnamespace = \"ML\"\naccess = \"read\"\n",
    )
    .expect("write");
    let (code, _, err) = outcome(
        &t,
        &["policy", "set", "-t", &t.name, bad.to_str().expect("path")],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("line 1") && err.contains("does nothing"),
        "{err}"
    );
    let (code, _, err) = outcome(
        &t,
        &[
            "policy",
            "check",
            "--file",
            bad.to_str().expect("path"),
            "/a",
            "read",
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("line 1"), "{err}");
    let shown = String::from_utf8(t.run(&["policy", "show", "-t", &t.name])).expect("utf-8");
    assert_eq!(shown, POLICY);

    // The change is on record, whatever the audit level.
    let events = String::from_utf8(t.run(&[
        "audit",
        "query",
        "-t",
        &t.name,
        "--op",
        "set_policy",
        "--output",
        "json",
    ]))
    .expect("utf-8");
    assert_eq!(events.lines().count(), 1, "{events}");
    assert!(events.contains("2 rules"), "{events}");

    // The CLI has no pod: the policy leaves it alone.
    t.fs(&["mkdir", "/checkpoints"]);
    t.run(&["policy", "clear", "-t", &t.name]);
    let shown = String::from_utf8(t.run(&["policy", "show", "-t", &t.name])).expect("utf-8");
    assert!(shown.contains("no access policy"), "{shown}");
    let info = String::from_utf8(t.run(&["tenant", "info", &t.name])).expect("utf-8");
    assert!(info.contains("policy:      none"), "{info}");
}
