//! Starts the real release `tillgated` on a state directory under the target directory (a real
//! disk, so fsync costs what it costs) and measures its start, memory and shutdown.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tillgate_client::{TillClient, TillSyncClient};

use crate::data::HERE;

pub struct Tillgated {
    pub dir: PathBuf,
    child: Option<Child>,
    pub socket: PathBuf,
    pub sync_addr: String,
    /// From spawn to the login socket's gRPC health check answering SERVING for the Login
    /// service (the replica is opened and checked before the socket is bound).
    pub ready_after: Duration,
}

/// The production defaults except paths, an ephemeral sync port, `info` logging to a file and
/// the login socket's per-uid call rate: the latency rows log in back to back from this one uid
/// (60+ calls a second), which the default 50 a second would pace — the rate is the flood's
/// subject (it keeps the defaults), not theirs.
pub fn write_config(dir: &Path) {
    write_config_with(
        dir,
        "[login_socket]\ncalls_per_second = 100000\ncall_burst = 100000\n",
    );
}

/// The same with `extra` appended (e.g. an `[[input.serial]]` reader).
pub fn write_config_with(dir: &Path, extra: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let text = format!(
        "[terminal]\nsales_point_id = \"{HERE}\"\n\
         [paths]\nstate_dir = \"{state}\"\nruntime_dir = \"{run}\"\n\
         [sync]\nlisten = \"127.0.0.1:0\"\n\
         [log]\nlevel = \"info\"\n{extra}",
        state = dir.join("state").display(),
        run = dir.join("run").display(),
    );
    std::fs::write(dir.join("tillgated.toml"), text).unwrap();
}

impl Tillgated {
    /// Spawns the daemon on `dir` (which holds `tillgated.toml`) and waits until it answers.
    pub async fn start(dir: &Path) -> Tillgated {
        let run = dir.join("run");
        let _ = std::fs::remove_file(run.join("sync.addr"));
        let socket = run.join("login.sock");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("daemon.log"))
            .unwrap();
        let started = Instant::now();
        let child = Command::new(tillgate_tests::bin("tillgated"))
            .arg("--config")
            .arg(dir.join("tillgated.toml"))
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut daemon = Tillgated {
            dir: dir.to_owned(),
            child: Some(child),
            socket,
            sync_addr: String::new(),
            ready_after: Duration::ZERO,
        };
        let deadline = started + Duration::from_secs(60);
        loop {
            if let Some(status) = daemon.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("tillgated exited early ({status}):\n{}", daemon.log_text());
            }
            if serving(&daemon.socket).await {
                daemon.ready_after = started.elapsed();
                break;
            }
            assert!(Instant::now() < deadline, "tillgated not ready in 60 s");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let addr = std::fs::read_to_string(run.join("sync.addr")).unwrap();
        daemon.sync_addr = format!("http://{}", addr.trim());
        daemon
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn replica_path(&self) -> PathBuf {
        self.dir.join("state").join("replica.db")
    }

    pub async fn client(&self) -> TillClient {
        TillClient::connect(&self.socket).await.unwrap()
    }

    pub async fn sync(&self) -> TillSyncClient {
        let name = format!("bench-{}", token_number());
        let token = self.client().await.create_token(&name).await.unwrap().token;
        TillSyncClient::connect(&self.sync_addr, Some(&token), None)
            .await
            .unwrap()
    }

    /// Numeric fields of `/proc/PID/status`, in order (`kB` units dropped).
    fn status_fields<const N: usize>(&self, names: [&str; N]) -> [u64; N] {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        names.map(|name| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap()
        })
    }

    /// (VmRSS, VmHWM) in KiB.
    pub fn memory(&self) -> (u64, u64) {
        let [rss, hwm] = self.status_fields(["VmRSS:", "VmHWM:"]);
        (rss, hwm)
    }

    /// (RssAnon, RssFile) in KiB: the heap against pages of mapped files and libraries.
    pub fn rss_parts(&self) -> (u64, u64) {
        let [anon, file] = self.status_fields(["RssAnon:", "RssFile:"]);
        (anon, file)
    }

    pub fn threads(&self) -> u64 {
        self.status_fields(["Threads:"])[0]
    }

    /// Resets VmHWM to the current RSS (Linux `clear_refs` value 5).
    pub fn reset_peak(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5").unwrap();
    }

    /// SIGTERM and wait (the daemon checkpoints its WAL on the way out).
    pub async fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "tillgated exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "tillgated did not stop");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Whether the login socket answers a health check for the Login service with SERVING.
async fn serving(socket: &Path) -> bool {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let Ok(channel) = tillgate_client::connect_unix(socket).await else {
        return false;
    };
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "tillgate.v1.Login".into(),
        })
        .await
        .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
}

impl Drop for Tillgated {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn token_number() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{}", NEXT.fetch_add(1, Ordering::Relaxed))
}
