//! Harness for end-to-end tests: starts the real `tillgated` binary on a temporary directory
//! (sync listener on port 0, socket in the temp dir) and talks to it over real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod keyboard;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tillgate_client::export::{ChangesExport, SnapshotExport};
use tillgate_client::proto as pb;
use tillgate_client::{ClientError, TillClient, TillSyncClient};

/// Directory holding the workspace's built binaries (`target/<profile>`), found from the test
/// executable (`target/<profile>/deps/…`) unless TILLGATE_BIN_DIR says otherwise.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TILLGATE_BIN_DIR") {
        return dir.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_owned()
}

pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} not found: build the workspace binaries first (`cargo test --workspace` does)",
        path.display()
    );
    path
}

/// The command that runs `tillgated` on `dir/tillgated.toml`, with RUST_LOG cleared so the
/// config's level applies.
pub fn tillgated_command(dir: &Path) -> Command {
    let mut command = Command::new(bin("tillgated"));
    command
        .arg("--config")
        .arg(dir.join("tillgated.toml"))
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("JOURNAL_STREAM");
    command
}

/// A running `tillgated` with its own state directory.
#[derive(Debug)]
pub struct Daemon {
    pub dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    child: Option<Child>,
    pub socket: PathBuf,
    pub sync_addr: String,
    pub log: PathBuf,
}

pub const SALES_POINT: &str = "sp-main";

/// Config for a test daemon rooted at `dir`; `extra` is appended verbatim (TOML).
pub fn config_text(dir: &Path, extra_terminal: &str, extra: &str) -> String {
    format!(
        "[terminal]\nsales_point_id = \"{SALES_POINT}\"\n{extra_terminal}\n\
         [paths]\nstate_dir = \"{state}\"\nruntime_dir = \"{run}\"\n\
         [sync]\nlisten = \"127.0.0.1:0\"\n\
         [log]\nlevel = \"debug\"\n{extra}\n",
        state = dir.join("state").display(),
        run = dir.join("run").display(),
    )
}

impl Daemon {
    /// Starts a daemon on a fresh temporary directory with the default test config.
    pub fn start() -> Daemon {
        Self::start_with("", "")
    }

    pub fn start_with(extra_terminal: &str, extra: &str) -> Daemon {
        let temp = tempfile::tempdir().expect("tempdir");
        let dir = temp.path().to_owned();
        std::fs::write(
            dir.join("tillgated.toml"),
            config_text(&dir, extra_terminal, extra),
        )
        .unwrap();
        let mut daemon = Self::spawn(&dir);
        daemon._temp = Some(temp);
        daemon
    }

    /// Starts (or restarts) a daemon on `dir`, which holds `tillgated.toml`.
    pub fn spawn(dir: &Path) -> Daemon {
        Self::spawn_with_command(dir, |_| tillgated_command(dir))
    }

    /// Like [`Daemon::spawn`], with the command built by `command` (given the log file's path,
    /// which becomes the daemon's stderr).
    pub fn spawn_with_command(dir: &Path, command: impl FnOnce(&Path) -> Command) -> Daemon {
        let mut daemon = Self::launch(dir, command);
        daemon.wait_ready();
        daemon
    }

    /// Starts the command without waiting for the daemon to listen (under socket activation
    /// it starts only at the first connection: see [`Daemon::wait_serving`]).
    pub fn launch(dir: &Path, command: impl FnOnce(&Path) -> Command) -> Daemon {
        let run = dir.join("run");
        let _ = std::fs::remove_file(run.join("sync.addr"));
        let log = dir.join(format!(
            "daemon-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let stderr = std::fs::File::create(&log).unwrap();
        let child = command(&log)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn tillgated");
        Daemon {
            dir: dir.to_owned(),
            _temp: None,
            child: Some(child),
            socket: run.join("login.sock"),
            sync_addr: String::new(),
            log,
        }
    }

    /// Waits until a call over the login socket succeeds (the first one starts a
    /// socket-activated daemon), then reads the sync address.
    pub async fn wait_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("tillgated exited early ({status}):\n{}", self.log_text());
            }
            let attempt = async {
                let mut client = TillClient::connect(&self.socket).await?;
                client.status().await
            };
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(5), attempt).await {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "tillgated not serving in 30 s:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.wait_ready();
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        let child = self.child.as_ref().expect("daemon running");
        nix::unistd::Pid::from_raw(child.id() as i32)
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), signal).unwrap();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr_file = self.dir.join("run").join("sync.addr");
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("tillgated exited early ({status}):\n{}", self.log_text());
            }
            if let Ok(addr) = std::fs::read_to_string(&addr_file)
                && self.socket.exists()
            {
                self.sync_addr = format!("http://{addr}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tillgated not ready in 30 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub async fn client(&self) -> TillClient {
        match TillClient::connect(&self.socket).await {
            Ok(client) => client,
            // The log says whether the daemon went away (it holds the socket while it runs).
            Err(e) => panic!("connect to login socket: {e:?}\n{}", self.log_text()),
        }
    }

    pub async fn sync(&self, token: Option<&str>) -> TillSyncClient {
        TillSyncClient::connect(&self.sync_addr, token, None)
            .await
            .expect("connect to sync listener")
    }

    /// Creates a sync token through the Admin API and returns a client that uses it.
    pub async fn authorized_sync(&self) -> TillSyncClient {
        self.authorized_sync_named("central").await
    }

    /// Creates the "central" sync token and applies `snapshot` with it.
    pub async fn push_snapshot(&self, snapshot: tillgate_client::export::Snapshot) {
        self.authorized_sync()
            .await
            .apply_snapshot(snapshot)
            .await
            .expect("snapshot applied");
    }

    pub async fn authorized_sync_named(&self, name: &str) -> TillSyncClient {
        let token = self.client().await.create_token(name).await.unwrap().token;
        self.sync(Some(&token)).await
    }

    /// SIGKILL at once, then reap: the daemon gets no chance to finish or clean up anything.
    pub fn kill(&mut self) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        self.child.take().expect("daemon running").wait().unwrap()
    }

    /// SIGTERM, then wait for exit (async, so the test's own connections keep being served).
    pub async fn stop(&mut self) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let mut child = self.child.take().expect("daemon running");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("tillgated did not stop on SIGTERM:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Cheap argon2 costs so tests hash quickly; the daemon accepts any costs within its limits.
pub fn account() -> Value {
    json!({ "id": "test-account", "m_cost_kib": 64, "t_cost": 1, "p_cost": 1 })
}

pub fn user(id: &str, ordinal: i64, pin: Option<&str>) -> Value {
    json!({
        "id": id, "ordinal": ordinal, "first_name": id.to_uppercase(), "last_name": "Test",
        "pin": pin, "sales_points": [SALES_POINT], "roles": [{ "role": "cashier" }]
    })
}

pub fn role(id: &str, allow: &[&str], deny: &[&str]) -> Value {
    json!({ "id": id, "name": id, "rank": 1, "allow": allow, "deny": deny })
}

pub fn snapshot(
    epoch: u64,
    revision: u64,
    roles: Vec<Value>,
    users: Vec<Value>,
) -> tillgate_client::export::Snapshot {
    snapshot_under(account(), epoch, revision, roles, users)
}

/// Like [`snapshot`], with the PINs hashed under `account`'s costs.
pub fn snapshot_under(
    account: Value,
    epoch: u64,
    revision: u64,
    roles: Vec<Value>,
    users: Vec<Value>,
) -> tillgate_client::export::Snapshot {
    let export = json!({
        "account": account,
        "cursor": { "epoch": epoch, "revision": revision },
        "roles": roles,
        "users": users,
    });
    SnapshotExport::parse(&export.to_string())
        .unwrap()
        .into_snapshot()
        .unwrap()
}

pub fn changes(
    base: (u64, u64),
    new_revision: u64,
    upsert_roles: Vec<Value>,
    upsert_users: Vec<Value>,
    delete_user_ids: &[&str],
    delete_role_ids: &[&str],
) -> tillgate_client::proto::ChangeBatch {
    let export = json!({
        "account": account(),
        "base": { "epoch": base.0, "revision": base.1 },
        "new_revision": new_revision,
        "upsert_roles": upsert_roles,
        "upsert_users": upsert_users,
        "delete_user_ids": delete_user_ids,
        "delete_role_ids": delete_role_ids,
    });
    ChangesExport::parse(&export.to_string())
        .unwrap()
        .into_batch()
        .unwrap()
}

/// Logs in with `pin` and returns the id of the user it resolved to (panics on a refusal).
pub async fn pin_user(client: &mut TillClient, pin: &str) -> String {
    let session = client.login_with_pin(pin).await.expect("PIN login");
    session.user.expect("session names its user").id
}

/// Logs in with `key_id` and returns the id of the user it resolved to (panics on a refusal).
pub async fn key_user(client: &mut TillClient, key_id: &str) -> String {
    let session = client.login_with_key(key_id).await.expect("key login");
    session.user.expect("session names its user").id
}

/// The gRPC status code of a failed call.
pub fn code(result: Result<impl std::fmt::Debug, ClientError>) -> (tonic::Code, String) {
    match result {
        Err(ClientError::Rpc(status)) => (status.code(), status.message().to_owned()),
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

/// The gRPC status of a failed call.
pub fn status(result: Result<impl std::fmt::Debug, ClientError>) -> tonic::Status {
    match result {
        Err(ClientError::Rpc(status)) => status,
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

/// A user with key ids as well as an optional PIN.
pub fn user_with_keys(id: &str, ordinal: i64, pin: Option<&str>, keys: &[&str]) -> Value {
    let mut u = user(id, ordinal, pin);
    u["keys"] = json!(keys);
    u
}

/// This process's lockout source on the login socket ("socket uid=<uid>").
pub fn my_socket_source() -> String {
    format!("socket uid={}", nix::unistd::geteuid().as_raw())
}

/// The next session event, failing after `within`.
pub async fn next_event(
    watch: &mut tonic::Streaming<pb::SessionEvent>,
    within: Duration,
) -> pb::SessionEvent {
    tokio::time::timeout(within, watch.message())
        .await
        .expect("a session event in time")
        .expect("watch stream ok")
        .expect("watch stream still open")
}

pub fn kind(event: &pb::SessionEvent) -> pb::SessionEventKind {
    pb::SessionEventKind::try_from(event.kind).expect("known event kind")
}

/// Runs `tillctl` as the unprivileged uid/gid 65534 against `daemon` (whose socket must be
/// reachable by others, e.g. mode 0666). The binary is copied into the daemon's directory, which
/// is opened up to 0755: the checkout (and so `target/`) may sit under a 0700 directory such as
/// /root or a private temporary directory, where that uid could not execute it.
pub fn tillctl_as_nobody(daemon: &Daemon, args: &[&str]) -> std::process::Output {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    for dir in [daemon.dir.clone(), daemon.dir.join("run")] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let copy = daemon.dir.join("tillctl-nobody");
    if !copy.exists() {
        std::fs::copy(bin("tillctl"), &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    Command::new(copy)
        .args(args)
        .env("TILLGATE_SOCKET", &daemon.socket)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap()
}

/// Runs `tillctl` against `daemon` with `stdin`; returns (success, stdout, stderr).
pub fn run_tillctl(
    daemon: &Daemon,
    args: &[&str],
    stdin: &str,
    env: &[(&str, &str)],
) -> (bool, String, String) {
    let mut child = Command::new(bin("tillctl"))
        .args(args)
        .env("TILLGATE_SOCKET", &daemon.socket)
        .env("TILLGATE_SYNC_ADDR", &daemon.sync_addr)
        .env_remove("TILLGATE_TOKEN")
        .envs(env.iter().copied())
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
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A pseudo-terminal whose slave side is reachable at `link` (a symlink the daemon opens as a
/// serial reader). The master is close-on-exec, so no daemon spawned by a parallel test keeps it.
#[derive(Debug)]
pub struct Pty {
    master: nix::pty::PtyMaster,
}

impl Pty {
    pub fn open(link: &Path) -> Pty {
        use nix::fcntl::OFlag;
        use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
        let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).unwrap();
        grantpt(&master).unwrap();
        unlockpt(&master).unwrap();
        let slave = ptsname_r(&master).unwrap();
        let _ = std::fs::remove_file(link);
        std::os::unix::fs::symlink(slave, link).unwrap();
        Pty { master }
    }

    pub fn write(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).unwrap();
    }
}

/// Waits until the daemon reads (or stops reading) the device at `path`.
pub async fn wait_device(client: &mut TillClient, path: &Path, attached: bool) {
    for _ in 0..400 {
        let devices = client.list_devices().await.unwrap();
        if devices
            .iter()
            .any(|d| Path::new(&d.path) == path && d.attached == attached)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{} never became attached={attached}", path.display());
}

/// True when this test runs as root. Otherwise the test is skipped with a note, except under
/// CI=true (where .ci/run runs as root), where it fails: a skip must never pass CI silently.
pub fn root_or_skip(what: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "needs root to {what}; CI must run this test"
    );
    eprintln!("skipped: needs root to {what}");
    false
}

/// Finds a systemd tool (Debian package `systemd`) on PATH. When it is missing the test fails
/// under CI=true, where .ci/run installs the package, and is skipped with a note elsewhere.
pub fn systemd_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/bin".into()])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        let message = format!(
            "{name} not found: install Debian's systemd package \
             (apt-get install --no-install-recommends systemd)"
        );
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{message}; CI must run the systemd tests"
        );
        eprintln!("skipped: {message}");
    }
    found
}

/// A datagram socket standing in for systemd's NOTIFY_SOCKET: collects what the daemon sends.
#[derive(Debug)]
pub struct NotifySocket {
    pub path: PathBuf,
    messages: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl NotifySocket {
    pub fn bind(path: &Path) -> NotifySocket {
        use std::sync::atomic::Ordering;
        let socket = std::os::unix::net::UnixDatagram::bind(path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (sink, stopped) = (messages.clone(), stop.clone());
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while !stopped.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    sink.lock().unwrap().push(text);
                }
            }
        });
        NotifySocket {
            path: path.to_owned(),
            messages,
            stop,
            reader: Some(reader),
        }
    }

    /// Every datagram received so far, in order.
    pub fn messages(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }

    /// How many datagrams so far hold `line` as one of their lines.
    pub fn count(&self, line: &str) -> usize {
        self.messages()
            .iter()
            .filter(|m| m.lines().any(|l| l == line))
            .count()
    }

    /// Waits (up to 30 s) until `done` holds for the messages received so far.
    pub async fn wait_until(&self, what: &str, done: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(&self.messages()) {
            assert!(
                Instant::now() < deadline,
                "no {what} from the daemon in 30 s; got {:?}",
                self.messages()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}
