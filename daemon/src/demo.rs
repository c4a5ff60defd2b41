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

/// The demo users' key ids and the reader profile each is valid under (a test holds
/// `account.json` to this list).
pub const KEYS: &[(&str, &str, &str)] = &[
    ("u-max", "01A1B2C3D4E5F68F", "ibutton-hex16"),
    ("u-anna", "0001234567", "rfid-em4100-dec10"),
];

/// Settings for the demo: state and socket under `dir`, the sync listener on `sync_listen`, and
/// the `[input]` section of `input_from` (a tillgated.toml, or a file holding only `[input]`), so
/// the demo can be tried with a real PIN pad or key reader.
pub fn settings(
    dir: &Path,
    sync_listen: &str,
    input_from: Option<&Path>,
) -> Result<Settings, DaemonError> {
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
    let Some(path) = input_from else {
        return Ok(Config::parse(&toml)?.validate()?);
    };
    let input = input_section(path)?;
    // Only the [input] part can be wrong: say whose it is.
    Config::parse(&format!("{toml}{input}"))
        .and_then(Config::validate)
        .map_err(|e| DaemonError::Demo(format!("the [input] section of {}: {e}", path.display())))
}

/// The `[input]` section of the file at `path`, as TOML text; the rest of the file is ignored.
fn input_section(path: &Path) -> Result<String, DaemonError> {
    let text = std::fs::read_to_string(path).map_err(|source| DaemonError::Io {
        context: format!("reading {} for the demo's [input] section", path.display()),
        source,
    })?;
    let mut table: toml::Table = toml::from_str(&text)
        .map_err(|e| DaemonError::Demo(format!("{}: {}", path.display(), e.message())))?;
    let input = table.remove("input").ok_or_else(|| {
        DaemonError::Demo(format!(
            "{} has no [input] section (with --demo only [input] is read from --config)",
            path.display()
        ))
    })?;
    let mut section = toml::Table::new();
    section.insert("input".into(), input);
    toml::to_string(&section).map_err(|e| DaemonError::Demo(format!("{}: {e}", path.display())))
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
  9000  Max Fischer   manager + cashier (also key id {max_key}: an iButton, profile {max_profile})
  1234  Anna Berger   shared with Ben Carter: Anna wins (lower ordinal)
                      (also key id {anna_key}: an EM4100 card, profile {anna_profile})
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

With a PIN pad or key reader: put its rule in a file's [input] section (README.md, "Hardware
input") and start the demo with --config FILE; `{tillctl} devices --watch` shows what it reads.

Stop with Ctrl-C; delete the demo directory to start over.
"#,
        state = settings.state_dir.display(),
        max_key = KEYS[0].1,
        max_profile = KEYS[0].2,
        anna_key = KEYS[1].1,
        anna_profile = KEYS[1].2,
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::input::profile::builtin;
    use crate::input::secret::Secret;

    #[test]
    fn demo_key_ids_are_valid_under_the_profiles_the_guide_names() {
        let account: serde_json::Value = serde_json::from_str(ACCOUNT).unwrap();
        let mut keys = Vec::new();
        for user in account["users"].as_array().unwrap() {
            for key in user["keys"].as_array().into_iter().flatten() {
                keys.push((user["id"].as_str().unwrap(), key.as_str().unwrap()));
            }
        }
        let listed: Vec<_> = KEYS.iter().map(|(user, key, _)| (*user, *key)).collect();
        assert_eq!(keys, listed, "account.json's key ids and demo::KEYS differ");
        for (user, key, profile) in KEYS {
            let canonical = builtin(profile)
                .unwrap()
                .canonical_id(&Secret::from(*key))
                .unwrap_or_else(|e| panic!("{user}'s key {key} under {profile}: {e}"));
            // The id a reader with that profile produces is the one stored for the user.
            assert_eq!(canonical.expose(), *key, "{user} under {profile}");
        }
    }

    #[test]
    fn demo_takes_the_input_section_of_a_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("input.toml");
        std::fs::write(
            &file,
            "[terminal]\nsales_point_id = \"ignored\"\n\
             [[input.rules]]\nname = \"My Reader\"\nrole = \"key_reader\"\n\
             profile = \"ibutton-hex16\"\n",
        )
        .unwrap();
        let settings = settings(dir.path(), "127.0.0.1:0", Some(&file)).unwrap();
        assert_eq!(settings.terminal.sales_point_id, SALES_POINT);
        assert_eq!(settings.input.rules.len(), 1);

        std::fs::write(&file, "[terminal]\nsales_point_id = \"x\"\n").unwrap();
        let err = settings_error(dir.path(), &file);
        assert!(err.contains("has no [input] section"), "{err}");
        std::fs::write(&file, "[[input.rules]]\nname = \"x\"\nrole = \"till\"\n").unwrap();
        let err = settings_error(dir.path(), &file);
        assert!(
            err.contains("the [input] section of ") && err.contains("unknown variant `till`"),
            "{err}"
        );
    }

    fn settings_error(dir: &Path, file: &Path) -> String {
        settings(dir, "127.0.0.1:0", Some(file))
            .map(|_| ())
            .unwrap_err()
            .to_string()
    }
}
