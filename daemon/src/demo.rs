//! `tillgated --demo`: a built-in demo account in a local directory, so a newcomer can log in
//! within a minute. The data is `daemon/demo/account.json`, the same export format that
//! `tillctl push snapshot` reads, seeded through the same validation and write path as a sync.

use std::path::{Path, PathBuf};

use tillgate_client::export::SnapshotExport;

use crate::config::{Config, Settings};
use crate::model::Cursor;
use crate::server::{Core, DaemonError};
use crate::validate::{Ingest, validate_snapshot};

const ACCOUNT: &str = include_str!("../demo/account.json");
pub const SALES_POINT: &str = "main-street";

/// Settings for the demo: state and socket under `dir`, the sync listener on `sync_listen`.
pub fn settings(dir: &Path, sync_listen: &str) -> Result<Settings, DaemonError> {
    let dir = std::path::absolute(dir).map_err(|source| DaemonError::Io {
        context: format!("demo directory {}", dir.display()),
        source,
    })?;
    let mut socket = dir.join("run").join("login.sock");
    if socket.as_os_str().len() > 107 {
        // Too long for sockaddr_un: fall back to a path relative to the working directory.
        socket = PathBuf::from("tillgate-demo.sock");
    }
    let toml = format!(
        "[terminal]\nsales_point_id = {sp:?}\n\
         [paths]\nstate_dir = {state:?}\nruntime_dir = {run:?}\n\
         [login_socket]\npath = {socket:?}\nmode = \"0600\"\n\
         [sync]\nlisten = {sync_listen:?}\n",
        sp = SALES_POINT,
        state = dir.join("state").display().to_string(),
        run = dir.join("run").display().to_string(),
        socket = socket.display().to_string(),
    );
    Ok(Config::parse(&toml)?.validate()?)
}

/// Loads the demo account if the replica is empty.
pub fn seed(core: &Core) -> Result<(), DaemonError> {
    let state = core.replica.state()?;
    if state.cursor.needs_snapshot() {
        let export =
            SnapshotExport::parse(ACCOUNT).map_err(|e| DaemonError::Demo(e.to_string()))?;
        let snapshot = export
            .into_snapshot()
            .map_err(|e| DaemonError::Demo(e.to_string()))?;
        let ingest = Ingest {
            key: &core.key,
            limits: &core.settings.cost_limits,
        };
        let target = Cursor {
            epoch: snapshot.target.epoch,
            revision: snapshot.target.revision,
        };
        let valid = validate_snapshot(snapshot.users, snapshot.roles, ingest)
            .map_err(|e| DaemonError::Demo(e.to_string()))?;
        core.replica
            .apply_snapshot(target, valid)
            .map_err(|e| DaemonError::Demo(e.to_string()))?;
    }
    Ok(())
}

/// Printed once the listeners are bound, so the sync address is the real one.
pub fn print_guide(settings: &Settings, sync: std::net::SocketAddr) {
    let socket = settings.socket_path.display();
    let tillctl = "cargo run -q -p tillgate-client --bin tillctl --";
    println!(
        r#"
tillgate demo — terminal at Sales Point "{SALES_POINT}"
  login socket:  {socket}
  sync endpoint: http://{sync}
  state:         {state}

Demo users (PIN → who logs in here):
  9000  Max Fischer   manager + cashier (also key id 01A1B2C3D4E5F6C8)
  1234  Anna Berger   shared with Ben Carter: Anna wins (lower ordinal)
  2468  Carla Diaz    cashier + trainee: trainee DENIES drawer.open
  1357  Dora Evans    inactive → PERMISSION_DENIED "user inactive"
  8642  Erik Gruber   only at "airport" → PERMISSION_DENIED "no access to this Sales Point"
  5555  Fay Huber     cashier here; her manager role is scoped to "airport"
  0000  nobody        → UNAUTHENTICATED

Try, in another terminal:
  export TILLGATE_SOCKET={socket}
  {tillctl} watch                       # follow session events
  {tillctl} login --pin                 # type 2468
  {tillctl} can drawer.open             # denied: trainee's DENY beats cashier's ALLOW
  echo 9000 | {tillctl} login --pin     # cashier switch to Max
  {tillctl} status
  {tillctl} explain u-ben               # why Ben's PIN logs Anna in
  {tillctl} collisions                  # every shared PIN or key here
  echo 9000 | {tillctl} authorize refund.create --pin   # manager override
  printf '9000\n7531\n7531\n' | {tillctl} change-pin u-carla --manager-pin   # a new PIN, as a PHC for central
  printf '1234\n9000\n9000\n' | {tillctl} change-pin u-anna --current-pin   # ALREADY_EXISTS: Max has it
  echo 9000 | {tillctl} enroll-key u-carla --manager-pin --timeout 20   # with a key reader in [input]:
                                        # the next key presented is captured, not logged in
  {tillctl} audit                       # the audit outbox (credential_enrolled rows carry the PHC)
  {tillctl} logout
  export TILLGATE_TOKEN=$({tillctl} token create central)
  {tillctl} push changes daemon/demo/changes.json --sync-addr http://{sync}   # reactivates Dora
  echo 1357 | {tillctl} login --pin

Stop with Ctrl-C; delete the demo directory to start over.
"#,
        state = settings.state_dir.display(),
    );
}
