//! Helpers shared by the CLI test crates (`cli_fs`, `cli_transfer`, `cli_audit`): the real
//! `tarbox` binary, the test database and a fresh tenant per test, driven through the binary.
//!
//! Each crate includes this module with `mod common;` and uses only part of it.
#![allow(dead_code)]

use std::io::Write as _;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_tarbox");

/// The test database URL, or `None` (after a message) when PostgreSQL is not reachable outside
/// CI. Panics in CI when it is not.
pub(crate) fn database() -> Option<String> {
    static URL: OnceLock<Option<String>> = OnceLock::new();
    URL.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(tarbox_tests::postgres_url())
    })
    .clone()
}

#[allow(clippy::disallowed_methods)] // unique tenant names across runs
pub(crate) fn nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A fresh tenant, deleted when dropped.
pub(crate) struct Tenant {
    pub(crate) url: String,
    pub(crate) name: String,
}

impl Tenant {
    pub(crate) fn new(test: &str) -> Option<Tenant> {
        let Some(url) = database() else {
            // Straight to stderr: the test harness hides `eprintln!` of passing tests.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: {test}: PostgreSQL not reachable"
            );
            return None;
        };
        let name = format!("cli-{test}-{}-{}", std::process::id(), nanos());
        let t = Tenant { url, name };
        t.run(&["tenant", "create", &t.name]);
        Some(t)
    }

    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("--database")
            .arg(&self.url)
            .args(args)
            .env_remove("TARBOX_CONFIG")
            .env("XDG_CONFIG_HOME", "/nonexistent")
            .stdin(Stdio::null());
        cmd
    }

    pub(crate) fn output(&self, cmd: &mut Command) -> Output {
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
    }

    /// Run a command that must succeed; its stdout.
    pub(crate) fn run(&self, args: &[&str]) -> Vec<u8> {
        let mut cmd = self.command(args);
        let out = self.output(&mut cmd);
        assert!(
            out.status.success(),
            "{args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// A `fs` subcommand on this tenant that must succeed; its stdout.
    pub(crate) fn fs(&self, args: &[&str]) -> Vec<u8> {
        let mut all = vec!["fs", args[0], "-t", &self.name];
        all.extend_from_slice(&args[1..]);
        self.run(&all)
    }

    /// A `fs` subcommand on this tenant that must fail with exit code 1 and a message naming
    /// each of `needles`.
    pub(crate) fn fs_fails(&self, args: &[&str], needles: &[&str]) {
        let mut all = vec!["fs", args[0], "-t", &self.name];
        all.extend_from_slice(&args[1..]);
        let out = self.output(&mut self.command(&all));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{all:?}: {err}");
        for needle in needles {
            assert!(err.contains(needle), "{all:?}: {needle:?} not in {err}");
        }
    }

    /// `fs put` from standard input.
    pub(crate) fn put_bytes(&self, remote: &str, data: &[u8]) {
        let mut cmd = self.command(&["fs", "put", "-t", &self.name, "-", remote]);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn tarbox fs put");
        {
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(data).expect("write to tarbox fs put");
        }
        let out = child.wait_with_output().expect("wait for tarbox fs put");
        assert!(
            out.status.success(),
            "fs put - {remote} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub(crate) fn stat(&self, path: &str) -> Value {
        let out = self.fs(&["stat", "--output", "json", path]);
        serde_json::from_slice(&out).expect("stat --output json is JSON")
    }

    pub(crate) fn ls(&self, path: &str) -> Vec<Value> {
        let out = self.fs(&["ls", "--output", "json", path]);
        match serde_json::from_slice(&out).expect("ls --output json is JSON") {
            Value::Array(items) => items,
            other => panic!("ls --output json printed {other}"),
        }
    }

    pub(crate) fn names(&self, path: &str) -> Vec<String> {
        self.ls(path)
            .iter()
            .map(|e| e["name"].as_str().expect("name").to_string())
            .collect()
    }
}

impl Drop for Tenant {
    fn drop(&mut self) {
        let _ = self
            .command(&["tenant", "delete", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
