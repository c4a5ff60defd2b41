//! The `tillctl` binary offline: hashing, and clear errors without a daemon.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::process::{Command, Stdio};

fn tillctl(args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tillctl"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn hash_reads_stdin_and_uses_one_salt_per_account() {
    let (ok, a, err) = tillctl(&["hash", "--account", "acme"], "1234\n");
    assert!(ok, "{err}");
    let (_, b, _) = tillctl(&["hash", "--account", "acme"], "1234\n");
    let (_, c, _) = tillctl(&["hash", "--account", "other"], "1234\n");
    assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(!a.contains("1234"));
}

#[test]
fn empty_secret_and_missing_daemon_are_clear_errors() {
    let (ok, _, err) = tillctl(&["hash"], "\n");
    assert!(!ok && err.contains("nothing was entered"), "{err}");
    let (ok, _, err) = tillctl(&["--socket", "/nonexistent/login.sock", "status"], "");
    assert!(
        !ok && err.contains("cannot connect to /nonexistent/login.sock"),
        "{err}"
    );
}

#[test]
fn a_closed_stdout_is_not_a_panic() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tillctl"))
        .args(["hash", "--account", "acme"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end of stdout before tillctl writes to it.
    drop(child.stdout.take());
    child.stdin.take().unwrap().write_all(b"1234\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "{stderr}");
}
