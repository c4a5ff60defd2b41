//! A full disk, for real: the state directory on a size-limited tmpfs (needs root to mount;
//! under CI=true a missing mount is a failure, not a skip). While it is full, logins are refused
//! with a clear UNAVAILABLE (an attempt that cannot be counted is not hashed), the daemon keeps
//! serving, and the status says so; once space returns, nothing is corrupt and logins and audit
//! resume.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use tillgate_tests::*;
use tonic::Code;

/// Unmounts the tmpfs when the test ends, however it ends.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status();
        match status {
            Ok(s) if s.success() => Some(Tmpfs(at.to_owned())),
            other => {
                let why = format!(
                    "cannot mount a tmpfs at {} ({other:?}): needs root",
                    at.display()
                );
                assert!(std::env::var_os("CI").is_none_or(|v| v != "true"), "{why}");
                eprintln!("skipped: {why}");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The most the filler writes: a little over the tmpfs, so a state directory that is somehow
/// not on it can never fill the real disk.
const FILL_AT_MOST: usize = 8 << 20;

/// Writes until the filesystem refuses; returns the filler's path.
fn fill(dir: &Path) -> PathBuf {
    let stat = nix::sys::statfs::statfs(dir).unwrap();
    assert_eq!(
        stat.filesystem_type(),
        nix::sys::statfs::TMPFS_MAGIC,
        "{} is not the test's tmpfs",
        dir.display()
    );
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let mut written = 0;
    let chunk = vec![0x5a_u8; 16 * 1024];
    while written < FILL_AT_MOST && file.write_all(&chunk).is_ok() {
        written += chunk.len();
    }
    let small = [0u8; 512];
    while written < FILL_AT_MOST && file.write_all(&small).is_ok() {
        written += small.len();
    }
    assert!(written < FILL_AT_MOST, "the 4 MiB tmpfs never filled");
    let _ = file.sync_all();
    path
}

fn integrity(db: &Path) -> String {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap()
}

#[tokio::test]
async fn a_full_state_directory_refuses_logins_loudly_and_recovers_intact() {
    let temp = tempfile::tempdir().unwrap();
    let Some(_tmpfs) = Tmpfs::mount(&temp.path().join("state"), "4m") else {
        return;
    };
    std::fs::write(
        temp.path().join("tillgated.toml"),
        config_text(temp.path(), "", ""),
    )
    .unwrap();
    let mut daemon = Daemon::spawn(temp.path());
    daemon
        .push_snapshot(snapshot(
            1,
            1,
            vec![role("cashier", &["sale.create"], &[])],
            vec![user("amy", 1, Some("1111"))],
        ))
        .await;
    let mut client = daemon.client().await;
    assert_eq!(pin_user(&mut client, "1111").await, "amy");
    let token = client.create_token("ops").await.unwrap().token;

    let filler = fill(&daemon.state_dir());
    // Every attempt now either could still be written (SQLite reuses WAL space it already has)
    // and is decided as usual, or is refused as UNAVAILABLE naming the full disk. Within a few
    // attempts the WAL has to grow, and then it is refused.
    let mut refused = None;
    for _ in 0..200 {
        match client.login_with_pin("1111").await {
            Ok(session) => assert_eq!(session.user.unwrap().id, "amy"),
            Err(e) => {
                let status = status(Err::<(), _>(e));
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                refused = Some(status.message().to_owned());
                break;
            }
        }
    }
    let refused = refused.expect("a login refused while the disk is full");
    assert!(
        refused.starts_with("the state directory is full: attempts cannot be counted or audited"),
        "{refused}"
    );
    // Keys too: nothing is decided that cannot be counted and audited.
    assert_eq!(
        code(client.login_with_key("NO-SUCH-KEY").await).0,
        Code::Unavailable
    );
    // Still serving, and loud: GetStatus, GetSyncState, tillctl status, the log.
    assert!(client.status().await.unwrap().disk_full);
    let mut sync = daemon.sync(Some(&token)).await;
    assert!(sync.state().await.unwrap().disk_full);
    let (ok, out, err) = run_tillctl(&daemon, &["status"], "", &[]);
    assert!(ok, "{err}");
    assert!(out.contains("DISK FULL"), "{out}");
    assert!(
        daemon
            .log_text()
            .contains("the state directory is full: logins are refused"),
        "{}",
        daemon.log_text()
    );

    // Space returns: logins and audit resume, and the status is quiet again.
    std::fs::remove_file(filler).unwrap();
    let session = client.login_with_pin("1111").await.unwrap();
    assert_eq!(session.user.unwrap().id, "amy");
    assert!(!client.status().await.unwrap().disk_full);
    let rows = client.audit_tail(5).await.unwrap().events;
    assert_eq!(rows.last().unwrap().outcome, "accepted", "{rows:?}");
    assert!(
        daemon
            .log_text()
            .contains("the state directory has space again")
    );
    daemon.stop().await;
    for db in ["local.db", "replica.db"] {
        assert_eq!(integrity(&daemon.state_dir().join(db)), "ok", "{db}");
    }
}
