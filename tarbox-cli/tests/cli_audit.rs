//! The audit commands of the real `tarbox` binary against PostgreSQL (`audit config`, `query`,
//! `stats`), asserting what a user sees. PostgreSQL is found as in `cli_fs.rs`.

mod common;

use serde_json::Value;

use common::Tenant;

/// Events of `tarbox audit query --output json`.
fn audit_events(t: &Tenant, filters: &[&str]) -> Vec<Value> {
    let mut args = vec!["audit", "query", "-t", &t.name, "--output", "json"];
    args.extend_from_slice(filters);
    String::from_utf8(t.run(&args))
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect()
}

/// A CLI change is in the audit trail when the command returns, with the command as its caller;
/// queries filter, statistics rank files, and bad values are named.
#[test]
fn audit_trail_of_cli_commands() {
    let Some(t) = Tenant::new("audit") else {
        return;
    };
    t.run(&[
        "audit",
        "config",
        "-t",
        &t.name,
        "--level",
        "basic",
        "--retention-days",
        "7",
    ]);
    t.put_bytes("/a.txt", b"one");
    t.fs(&["mkdir", "/d"]);
    t.fs(&["mv", "/a.txt", "/d/b.txt"]);
    t.run(&["layer", "checkpoint", "-t", &t.name, "cp"]);

    let changes = audit_events(&t, &["--op", "create,mkdir,rename,checkpoint"]);
    let seen: Vec<(&str, &str, &str)> = changes
        .iter()
        .map(|e| {
            (
                e["op"].as_str().unwrap_or(""),
                e["path"].as_str().unwrap_or(""),
                e["path2"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("create", "/a.txt", ""),
            ("mkdir", "/d", ""),
            ("rename", "/a.txt", "/d/b.txt"),
            ("checkpoint", "", ""),
        ]
    );
    for e in &changes {
        assert_ne!(e["pid"], 0, "the command names its process: {e}");
        assert_eq!(e["process"], "tarbox", "{e}");
    }
    let under_d = audit_events(&t, &["--path", "/d"]);
    assert!(
        under_d
            .iter()
            .all(|e| e["path"] == "/d" || e["path2"] == "/d/b.txt"),
        "{under_d:?}"
    );
    assert!(audit_events(&t, &["--result", "denied"]).is_empty());

    // Close records (standard) feed the statistics.
    t.run(&["audit", "config", "-t", &t.name, "--level", "standard"]);
    assert_eq!(t.fs(&["cat", "/d/b.txt"]), b"one");
    let out = t.run(&[
        "audit", "stats", "-t", &t.name, "--by", "file", "--output", "json",
    ]);
    let stats: Value = serde_json::from_slice(&out).expect("stats JSON");
    assert_eq!(stats["top"][0]["key"], "/d/b.txt", "{stats}");
    assert_eq!(stats["top"][0]["bytes_read"], 3, "{stats}");

    let bad = |args: &[&str]| {
        let out = t.output(&mut t.command(args));
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = bad(&["audit", "config", "-t", &t.name, "--level", "loud"]);
    assert_eq!(code, 1);
    assert!(err.contains("loud"), "{err}");
    let (code, err) = bad(&["audit", "query", "-t", &t.name, "--since", "yesterday"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("--since") && err.contains("yesterday"),
        "{err}"
    );
    let (code, err) = bad(&["audit", "query", "-t", &t.name, "--op", "nope"]);
    assert_eq!(code, 2);
    assert!(err.contains("nope"), "{err}");
}
