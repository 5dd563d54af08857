//! Native mounts through a real FUSE mount (PostgreSQL): a Python virtual environment made in a
//! `rw` `/.venv` and imported from, programs run from a `ro` tools directory that refuses every
//! change, and definitions stored with `tarbox native` put in force by the next mount.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

mod mounted;

use mounted::{BIN, Mount, Store, fuse_available, run};

fn sh(script: &str) -> (bool, String, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .expect("run sh");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sh_ok(script: &str) -> String {
    let (ok, out, err) = sh(script);
    assert!(ok, "{script} failed:\n{out}\n{err}");
    out
}

/// `python3 -m venv` into a `rw` `/.venv` whose source is the tenant's own directory, then a
/// module written there is imported by the venv's interpreter; the files are on the host.
#[test]
fn python_venv_in_a_rw_native_mount() {
    if !fuse_available() {
        return;
    }
    let base = tempfile::tempdir().expect("base");
    let flag = format!("/.venv={}/venvs/{{tenant}}:rw", base.path().display());
    let Some(m) = Mount::with_flags(Store::Postgres, &["--native", &flag]) else {
        return;
    };
    let venv = m.path(".venv");
    sh_ok(&format!("python3 -m venv --without-pip {}", venv.display()));
    let site = sh_ok(&format!(
        "{}/bin/python -c 'import site; print(site.getsitepackages()[0])'",
        venv.display()
    ));
    let site = Path::new(site.trim());
    assert!(site.starts_with(&venv), "{site:?} is inside the venv");
    std::fs::write(
        site.join("hello_native.py"),
        "GREETING = 'from the host disk'\n",
    )
    .expect("write a module");
    let out = sh_ok(&format!(
        "cd / && {}/bin/python -c 'import hello_native; print(hello_native.GREETING)'",
        venv.display()
    ));
    assert_eq!(out.trim(), "from the host disk");

    let host = base.path().join("venvs").join(&m.tenant);
    assert!(host.join("pyvenv.cfg").is_file(), "the venv is on the host");
    let rel = site.strip_prefix(&venv).expect("relative");
    assert!(host.join(rel).join("hello_native.py").is_file());
    // Nothing of it is in the tree's usage.
    let usage = run(Command::new(BIN)
        .args(m.database_args())
        .args(["tenant", "info", &m.tenant, "--output", "json"]));
    let usage: serde_json::Value = serde_json::from_str(&usage).expect("json");
    assert!(
        usage["usage"]["bytes"].as_u64().unwrap_or(u64::MAX) < 4096,
        "the venv is not charged to the tenant: {usage}"
    );
}

/// A `ro` mount of a tools directory: its programs run, every change is refused with "Read-only
/// file system", the host directory is unchanged. The definition is stored with
/// `tarbox native add` and put in force by the mount that starts next.
#[test]
fn stored_ro_tools_run_and_refuse_changes() {
    if !fuse_available() {
        return;
    }
    let tools = tempfile::tempdir().expect("tools");
    std::fs::set_permissions(tools.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::copy("/bin/echo", tools.path().join("echo")).expect("copy echo");
    std::fs::write(tools.path().join("README"), "tools\n").expect("readme");
    let Some(mut m) = Mount::prepare(Store::Postgres, &[]) else {
        return;
    };
    let source = tools.path().display().to_string();
    run(Command::new(BIN).args(m.database_args()).args([
        "native",
        "add",
        "-t",
        &m.tenant,
        "--path",
        "/opt/tools",
        "--source",
        &source,
        "--mode",
        "ro",
    ]));
    let listed = run(Command::new(BIN)
        .args(m.database_args())
        .args(["native", "list", "-t", &m.tenant]));
    assert!(
        listed.contains("path = \"/opt/tools\"") && listed.contains("mode = \"ro\""),
        "{listed}"
    );
    m.start();

    let dir = m.path("opt/tools");
    assert_eq!(
        sh_ok(&format!("{}/echo hello from a native mount", dir.display())).trim(),
        "hello from a native mount"
    );
    assert_eq!(
        sh_ok(&format!("ls {}", dir.display()))
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["README", "echo"]
    );
    for change in [
        format!("touch {}/new", dir.display()),
        format!("echo x >> {}/README", dir.display()),
        format!("rm {}/README", dir.display()),
        format!("mkdir {}/d", dir.display()),
        format!("chmod 777 {}/echo", dir.display()),
        format!("mv {0}/README {0}/README2", dir.display()),
    ] {
        let (ok, _, err) = sh(&change);
        assert!(
            !ok && err.contains("Read-only file system"),
            "{change}: {err}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(tools.path().join("README")).expect("host"),
        "tools\n"
    );
    // Moving a file of the tree into it copies nothing: EXDEV, then the copy is refused too.
    std::fs::write(m.path("tree-file"), "t").expect("tree file");
    let (ok, _, _) = sh(&format!(
        "mv {} {}/",
        m.path("tree-file").display(),
        dir.display()
    ));
    assert!(!ok);
    assert!(m.path("tree-file").exists(), "the tree's file stays");
}
