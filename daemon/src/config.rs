//! The daemon's TOML configuration, validated at start with errors naming the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::credential::CostLimits;
use crate::lockout::LockoutPolicy;
use crate::login::PolicySettings;
use crate::model::Terminal;
use crate::session::{KeyRemoval, SessionPolicy};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/tillgate";
pub const DEFAULT_RUNTIME_DIR: &str = "/run/tillgate";
pub const DEFAULT_SYNC_LISTEN: &str = "127.0.0.1:7870";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// One line (it goes into log lines too): where, then what.
    #[error("config file {path}: {problem}")]
    Parse {
        path: PathBuf,
        problem: String,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("config key {key}: {problem}")]
    Invalid { key: String, problem: String },
}

pub(crate) fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub terminal: TerminalConfig,
    #[serde(default)]
    pub paths: PathsConfig,
    #[serde(default)]
    pub login_socket: LoginSocketConfig,
    #[serde(default)]
    pub sync: SyncConfig,
    #[serde(default)]
    pub hashing: HashingConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub lockout: LockoutConfig,
    #[serde(default)]
    pub session: SessionConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub replica: ReplicaConfig,
    #[serde(default)]
    pub input: InputConfig,
    #[serde(default)]
    pub enrolment: EnrolmentConfig,
}

/// Enrolment of keys and PINs at the till (EnrollKey, ChangePin).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrolmentConfig {
    /// The permission a manager's credential must hold to authorise an enrolment.
    pub permission: String,
    /// The shortest new PIN ChangePin accepts.
    pub min_pin_len: usize,
    /// How long EnrollKey waits for a key when the caller gives no timeout.
    pub capture_timeout: String,
}

impl Default for EnrolmentConfig {
    fn default() -> Self {
        EnrolmentConfig {
            permission: "user.credentials.manage".into(),
            min_pin_len: 4,
            capture_timeout: "20s".into(),
        }
    }
}

/// Hardware input: which evdev devices and serial ports are PIN pads and key readers.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InputConfig {
    /// Directory of evdev nodes, watched for hot-plug.
    pub dir: PathBuf,
    /// Matched in order against every evdev device; the first match decides.
    pub rules: Vec<DeviceRule>,
    pub serial: Vec<SerialReaderConfig>,
    pub pin_pad: PinPadSettings,
    /// Reader profiles of the site's own, by name; they may start from a built-in (`base`).
    pub profiles: std::collections::BTreeMap<String, ProfileDef>,
}

impl Default for InputConfig {
    fn default() -> Self {
        InputConfig {
            dir: "/dev/input".into(),
            rules: Vec::new(),
            serial: Vec::new(),
            pin_pad: PinPadSettings::default(),
            profiles: std::collections::BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TerminatorDef {
    Enter,
    Tab,
    /// No terminator: `fixed_length` characters make a frame.
    None,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EncodingDef {
    Text,
    Hex,
    Decimal,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RomPartsDef {
    /// All 8 bytes: family, serial, CRC.
    Full,
    /// Family and serial, no CRC.
    FamilySerial,
    /// The 48-bit serial only (`family` must be given).
    Serial,
}

/// A reader profile: framing of the burst, then canonicalisation of the id. Every key is
/// optional and overrides `base` (or the generic defaults).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct ProfileDef {
    /// A built-in profile to start from.
    pub base: Option<String>,
    pub max_gap_ms: Option<u64>,
    pub prefix: Option<String>,
    pub suffix: Option<String>,
    pub terminator: Option<TerminatorDef>,
    pub fixed_length: Option<usize>,
    pub min_len: Option<usize>,
    pub max_len: Option<usize>,
    /// What the reader types when a key is pulled (e.g. "OUT").
    pub removal_token: Option<String>,
    pub encoding: Option<EncodingDef>,
    pub reverse_bytes: Option<bool>,
    /// Treat the id as a 1-Wire ROM id (hex encoding).
    pub rom: Option<RomPartsDef>,
    pub family: Option<u8>,
    pub check_crc: Option<bool>,
    pub strip_family: Option<bool>,
    pub strip_crc: Option<bool>,
    /// Zero-pad decimal ids to this width.
    pub decimal_width: Option<usize>,
    pub trim: Option<bool>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DeviceRole {
    PinPad,
    KeyReader,
}

/// Matches evdev devices; every key given must match, and at least one must be given.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct DeviceRule {
    /// Device name, exact or a glob (`*`, `?`, `[…]`).
    pub name: Option<String>,
    /// `vvvv:pppp` in hex.
    pub vendor_product: Option<String>,
    /// Physical path glob, e.g. `usb-0000:00:14.0-2/input0`.
    pub phys: Option<String>,
    pub uniq: Option<String>,
    /// A `/dev/input/by-id/…` (or by-path) link that must point at the device.
    pub by_id: Option<PathBuf>,
    pub role: Option<DeviceRole>,
    /// Reader profile for key readers (see the README); default `generic-wedge`.
    pub profile: Option<String>,
    /// Take the device exclusively (EVIOCGRAB): default true for key readers, false for PIN pads.
    pub grab: Option<bool>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SerialFramingConfig {
    #[default]
    Line,
    StxEtx,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ParityConfig {
    #[default]
    None,
    Odd,
    Even,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SerialReaderConfig {
    /// Label in logs and `tillctl devices`; defaults to the path.
    #[serde(default)]
    pub name: Option<String>,
    pub path: PathBuf,
    #[serde(default = "default_baud")]
    pub baud: u32,
    #[serde(default)]
    pub parity: ParityConfig,
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    #[serde(default)]
    pub framing: SerialFramingConfig,
    #[serde(default = "default_profile")]
    pub profile: String,
}

fn default_baud() -> u32 {
    9600
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}
fn default_profile() -> String {
    "generic-wedge".into()
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PinPadSettings {
    /// A partial entry is dropped after this long without a key.
    pub idle_timeout_ms: u64,
    pub min_len: usize,
    pub max_len: usize,
    /// Submit after this many digits without waiting for Enter.
    pub fixed_len: Option<usize>,
}

impl Default for PinPadSettings {
    fn default() -> Self {
        PinPadSettings {
            idle_timeout_ms: 10_000,
            min_len: 4,
            max_len: 8,
            fixed_len: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminalConfig {
    pub sales_point_id: String,
    #[serde(default)]
    pub sub_terminal_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathsConfig {
    /// Replica database and terminal key.
    pub state_dir: PathBuf,
    /// Login socket and the bound sync address file.
    pub runtime_dir: PathBuf,
}

impl Default for PathsConfig {
    fn default() -> Self {
        PathsConfig {
            state_dir: DEFAULT_STATE_DIR.into(),
            runtime_dir: DEFAULT_RUNTIME_DIR.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginSocketConfig {
    /// Defaults to `<runtime_dir>/login.sock`.
    pub path: Option<PathBuf>,
    /// Group given to the socket (mode 0660), e.g. the POS app's group.
    pub group: Option<String>,
    /// Socket file mode, as an octal string.
    pub mode: String,
    /// Peers allowed to connect, by uid or primary gid. Both empty: any peer the file mode lets in.
    pub allow_uids: Vec<u32>,
    pub allow_gids: Vec<u32>,
    /// Peers allowed to call the Admin service (tokens). The daemon's own uid always is.
    pub admin_uids: Vec<u32>,
    pub max_message_bytes: usize,
    /// Connections open at once; more are closed at once.
    pub max_connections: usize,
    /// Calls in progress at once, all connections together; more wait.
    pub max_calls: usize,
    /// The longest a call may take (a stream's first answer); then it ends with CANCELLED.
    pub call_timeout: String,
    /// Connections one uid may have open at once (default: 16, or max_connections if lower).
    pub max_connections_per_uid: Option<usize>,
    /// Calls a second one uid may make, sustained, after a burst of `call_burst`; a call over
    /// that waits its turn, up to `max_call_wait`, else RESOURCE_EXHAUSTED at once.
    pub calls_per_second: u32,
    pub call_burst: u32,
    /// Default: 2s, or half of call_timeout if that is shorter.
    pub max_call_wait: Option<String>,
    /// HTTP/2 keepalive, as `sync.keepalive`: a POS app that vanished without closing its
    /// connection (its Watch streams included) is found out by an unanswered ping.
    pub keepalive: String,
}

impl Default for LoginSocketConfig {
    fn default() -> Self {
        LoginSocketConfig {
            path: None,
            group: None,
            mode: "0660".into(),
            allow_uids: Vec::new(),
            allow_gids: Vec::new(),
            admin_uids: vec![0],
            max_message_bytes: 64 * 1024,
            max_connections: 64,
            max_calls: 128,
            call_timeout: "30s".into(),
            max_connections_per_uid: None,
            calls_per_second: 50,
            call_burst: 100,
            max_call_wait: None,
            keepalive: "30s".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// TCP address for central's pushes; port 0 picks a free port (written to
    /// `<runtime_dir>/sync.addr`).
    pub listen: String,
    pub max_message_bytes: usize,
    pub tls: Option<TlsConfig>,
    /// Connections open at once; more are closed at once.
    pub max_connections: usize,
    /// Calls in progress at once, all connections together; more wait.
    pub max_calls: usize,
    /// The longest a call may take; then it ends with CANCELLED.
    pub call_timeout: String,
    /// After this long without a frame from central the terminal pings the connection, and
    /// closes it if the ping is not answered within as long again: a central that vanished
    /// without closing (power cut, network gone) frees its calls, and the snapshot slot, then.
    pub keepalive: String,
    /// Connections one IP address may have open at once (default: 4, or max_connections if lower).
    pub max_connections_per_peer: Option<usize>,
    /// A connection that has not made a call with a valid token this long after it was
    /// accepted is closed (an idle peer, a stalled TLS handshake, health checks only).
    pub auth_timeout: String,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            listen: DEFAULT_SYNC_LISTEN.into(),
            max_message_bytes: 16 * 1024 * 1024,
            tls: None,
            max_connections: 16,
            max_calls: 32,
            call_timeout: "10m".into(),
            keepalive: "30s".into(),
            max_connections_per_peer: None,
            auth_timeout: "10s".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA (mutual TLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HashingConfig {
    /// argon2 evaluations running at once; each holds m_cost KiB of memory.
    pub max_concurrent: usize,
    /// Attempts from one source (a socket uid, a reader) waiting for hashing; more are refused
    /// with RESOURCE_EXHAUSTED at once.
    pub max_waiting_per_source: usize,
    /// Distinct (salt, costs) schemes per credential kind a sync may leave in the replica: a
    /// login evaluates argon2 once per scheme (one salt per account keeps this at 1).
    pub max_schemes: usize,
    pub max_m_cost_kib: u32,
    pub max_t_cost: u32,
    pub max_p_cost: u32,
}

impl Default for HashingConfig {
    fn default() -> Self {
        let limits = CostLimits::default();
        HashingConfig {
            max_concurrent: 2,
            max_waiting_per_source: 4,
            max_schemes: 4,
            max_m_cost_kib: limits.max_m_cost_kib,
            max_t_cost: limits.max_t_cost,
            max_p_cost: limits.max_p_cost,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter such as "info" or "tillgate_daemon=debug"; RUST_LOG overrides it.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// Failed-attempt lockout. Durations are humantime strings such as "30s", "15m", "1h 30m".
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LockoutConfig {
    /// Failed attempts (wrong PIN or key) from one source, since its last success, that pass
    /// without a delay.
    pub max_failures: u32,
    /// The delay after each further failure from that source; it doubles with each, up to
    /// `max_delay`.
    pub delay: String,
    pub max_delay: String,
    /// The terminal's PIN budget: wrong PINs from all sources together that it takes at once.
    pub terminal_max_failures: u32,
    /// One failure of the terminal budget is given back every this long. Together they bound
    /// the wrong PINs per day: G = terminal_max_failures + 24 h / terminal_refill.
    pub terminal_refill: String,
}

impl Default for LockoutConfig {
    fn default() -> Self {
        let p = LockoutPolicy::default();
        LockoutConfig {
            max_failures: p.max_failures,
            delay: humantime::format_duration(p.delay).to_string(),
            max_delay: humantime::format_duration(p.max_delay).to_string(),
            terminal_max_failures: p.terminal_max_failures,
            terminal_refill: humantime::format_duration(p.terminal_refill).to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum KeyRemovalConfig {
    Lock,
    #[default]
    Logout,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// Lock the session after this long without activity; "off" never locks.
    pub idle_lock: String,
    /// What removing the key that opened the session does: "logout" or "lock".
    pub on_key_removal: KeyRemovalConfig,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            idle_lock: "5m".into(),
            on_key_removal: KeyRemovalConfig::Logout,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Unacknowledged audit rows beyond which the outbox reports a loud status (rows are kept).
    pub max_rows: u64,
    /// How often the coalesced attempts of a source are written as its summary row while any
    /// are pending; streaks idle for a whole interval end at the tick (see `coalesce.rs`).
    pub summary_interval: String,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            max_rows: 100_000,
            summary_interval: "60s".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicaConfig {
    /// Refuse logins when the last successful sync is older than this; "off" never does.
    pub max_age: String,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            max_age: "off".into(),
        }
    }
}

/// Parses a duration key; `allow_off` accepts "off" as None.
fn duration(
    key: &'static str,
    text: &str,
    allow_off: bool,
    min: Duration,
) -> Result<Option<Duration>, ConfigError> {
    let text = text.trim();
    if allow_off && text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let value = humantime::parse_duration(text).map_err(|e| {
        let off = if allow_off { ", or \"off\"" } else { "" };
        invalid(
            key,
            format!("{text:?} is not a duration such as \"30s\" or \"15m\"{off} ({e})"),
        )
    })?;
    if value < min {
        return Err(invalid(
            key,
            format!(
                "{text:?} is shorter than the minimum {}",
                humantime::format_duration(min)
            ),
        ));
    }
    Ok(Some(value))
}

/// A per-peer connection cap: at least 1 and at most the listener's cap; unset, `default` (or
/// the listener's cap, when that is lower).
fn per_peer(
    key: &'static str,
    value: Option<usize>,
    default: usize,
    max_connections: usize,
) -> Result<usize, ConfigError> {
    match value {
        None => Ok(default.min(max_connections)),
        Some(0) => Err(invalid(key, "must be at least 1")),
        Some(n) if n > max_connections => Err(invalid(
            key,
            format!("{n} is more than the listener's max_connections ({max_connections})"),
        )),
        Some(n) => Ok(n),
    }
}

fn required_duration(
    key: &'static str,
    text: &str,
    min: Duration,
) -> Result<Duration, ConfigError> {
    duration(key, text, false, min)?.ok_or_else(|| invalid(key, "must be set"))
}

/// The part of the settings that SIGHUP applies to the running daemon (see `reload`). Everything
/// else in [`Settings`] takes effect at the next start. A module whose settings can change live
/// adds them here and follows `Core::live`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSettings {
    /// The tracing filter from `log.level` (RUST_LOG, when set, wins over it).
    pub log_level: String,
}

/// Bounds on one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    pub max_connections: usize,
    /// Per uid on the login socket, per IP address on the sync listener.
    pub max_connections_per_peer: usize,
    pub max_calls: usize,
    pub call_timeout: Duration,
}

/// The configuration after checks, with derived values filled in.
#[derive(Debug, Clone)]
pub struct Settings {
    pub terminal: Terminal,
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
    pub socket_path: PathBuf,
    pub socket_group: Option<String>,
    pub socket_mode: u32,
    pub allow_uids: Vec<u32>,
    pub allow_gids: Vec<u32>,
    pub admin_uids: Vec<u32>,
    pub login_max_message_bytes: usize,
    pub sync_listen: SocketAddr,
    pub sync_max_message_bytes: usize,
    pub tls: Option<TlsConfig>,
    pub max_concurrent_hashes: usize,
    pub max_waiting_per_source: usize,
    /// `hashing.max_schemes`: distinct hash schemes per credential kind a sync may leave.
    pub max_schemes: usize,
    pub cost_limits: CostLimits,
    pub login_limits: ListenerLimits,
    pub sync_limits: ListenerLimits,
    /// HTTP/2 keepalive of the sync listener (ping interval and answer timeout); None: off.
    pub sync_keepalive: Option<Duration>,
    /// `sync.auth_timeout`: how long a sync connection may go without a call with a valid token.
    pub sync_auth_timeout: Duration,
    /// The login socket's per-uid call budget.
    pub login_call_rate: crate::call_rate::CallRate,
    /// HTTP/2 keepalive of the login socket; None: off.
    pub login_keepalive: Option<Duration>,
    pub policy: PolicySettings,
    pub session: SessionPolicy,
    pub log_format: LogFormat,
    /// The reloadable part, as read at start; the daemon's current values are in `Core::live`.
    pub live: LiveSettings,
    /// Input rules at start; a reload publishes new ones through `Core::input`.
    pub input: crate::hardware::InputSettings,
    pub enrolment: crate::enroll::EnrolmentSettings,
}

impl Settings {
    /// Central's data (replaceable by the next snapshot).
    pub fn database_path(&self) -> PathBuf {
        self.state_dir.join("replica.db")
    }

    /// The terminal's own state: sync tokens, audit outbox, lockout counters, identity.
    pub fn local_store_path(&self) -> PathBuf {
        self.state_dir.join("local.db")
    }

    pub fn terminal_key_path(&self) -> PathBuf {
        self.state_dir.join("terminal.key")
    }

    pub fn sync_addr_path(&self) -> PathBuf {
        self.runtime_dir.join("sync.addr")
    }

    /// The config keys whose values differ between `self` and `other` and that only take
    /// effect at a restart (everything outside [`LiveSettings`]).
    pub fn restart_only_changes(&self, other: &Settings) -> Vec<&'static str> {
        let mut keys = Vec::new();
        let mut check = |key, differs: bool| {
            if differs {
                keys.push(key);
            }
        };
        check(
            "terminal.sales_point_id",
            self.terminal.sales_point_id != other.terminal.sales_point_id,
        );
        check(
            "terminal.sub_terminal_id",
            self.terminal.sub_terminal_id != other.terminal.sub_terminal_id,
        );
        check("paths.state_dir", self.state_dir != other.state_dir);
        check("paths.runtime_dir", self.runtime_dir != other.runtime_dir);
        check("login_socket.path", self.socket_path != other.socket_path);
        check(
            "login_socket.group",
            self.socket_group != other.socket_group,
        );
        check("login_socket.mode", self.socket_mode != other.socket_mode);
        check(
            "login_socket.allow_uids",
            self.allow_uids != other.allow_uids,
        );
        check(
            "login_socket.allow_gids",
            self.allow_gids != other.allow_gids,
        );
        check(
            "login_socket.admin_uids",
            self.admin_uids != other.admin_uids,
        );
        check(
            "login_socket.max_message_bytes",
            self.login_max_message_bytes != other.login_max_message_bytes,
        );
        check("sync.listen", self.sync_listen != other.sync_listen);
        check(
            "sync.max_message_bytes",
            self.sync_max_message_bytes != other.sync_max_message_bytes,
        );
        check("sync.tls", self.tls != other.tls);
        check(
            "hashing.max_concurrent",
            self.max_concurrent_hashes != other.max_concurrent_hashes,
        );
        check(
            "hashing.max_waiting_per_source",
            self.max_waiting_per_source != other.max_waiting_per_source,
        );
        check("hashing.max_schemes", self.max_schemes != other.max_schemes);
        check("hashing.max_*_cost", self.cost_limits != other.cost_limits);
        check(
            "login_socket.max_*",
            self.login_limits != other.login_limits,
        );
        check("sync.max_*", self.sync_limits != other.sync_limits);
        check(
            "sync.keepalive",
            self.sync_keepalive != other.sync_keepalive,
        );
        check(
            "sync.auth_timeout",
            self.sync_auth_timeout != other.sync_auth_timeout,
        );
        check(
            "login_socket.calls_per_second, call_burst, max_call_wait",
            self.login_call_rate != other.login_call_rate,
        );
        check(
            "login_socket.keepalive",
            self.login_keepalive != other.login_keepalive,
        );
        check("log.format", self.log_format != other.log_format);
        check("lockout.*", self.policy.lockout != other.policy.lockout);
        check(
            "session.idle_lock",
            self.session.idle_lock != other.session.idle_lock,
        );
        check(
            "session.on_key_removal",
            self.session.on_key_removal != other.session.on_key_removal,
        );
        check(
            "audit.max_rows",
            self.policy.audit_max_rows != other.policy.audit_max_rows,
        );
        check(
            "audit.summary_interval",
            self.policy.audit_summary_interval != other.policy.audit_summary_interval,
        );
        check(
            "replica.max_age",
            self.policy.max_replica_age != other.policy.max_replica_age,
        );
        check("enrolment.*", self.enrolment != other.enrolment);
        keys
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse {
                problem, source, ..
            } => ConfigError::Parse {
                path: path.to_owned(),
                problem,
                source,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|source| {
            let at = source
                .span()
                .map(|span| {
                    let before = text.get(..span.start).unwrap_or(text);
                    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
                    format!(
                        "line {}, column {}: ",
                        before.matches('\n').count() + 1,
                        before[line_start..].chars().count() + 1
                    )
                })
                .unwrap_or_default();
            ConfigError::Parse {
                path: PathBuf::from("<inline>"),
                problem: format!("{at}{}", source.message().trim_end()),
                source: Box::new(source),
            }
        })
    }

    /// Checks every value and derives the settings the daemon runs with.
    pub fn validate(self) -> Result<Settings, ConfigError> {
        let sales_point_id = self.terminal.sales_point_id.trim().to_owned();
        if sales_point_id.is_empty() {
            return Err(invalid("terminal.sales_point_id", "must not be empty"));
        }
        let sub_terminal_id = match self.terminal.sub_terminal_id {
            Some(sub) if sub.trim().is_empty() => {
                return Err(invalid(
                    "terminal.sub_terminal_id",
                    "must not be empty when set (remove the key instead)",
                ));
            }
            other => other,
        };
        for (key, path) in [
            ("paths.state_dir", &self.paths.state_dir),
            ("paths.runtime_dir", &self.paths.runtime_dir),
        ] {
            if path.as_os_str().is_empty() {
                return Err(invalid(key, "must not be empty"));
            }
        }
        let socket_path = self
            .login_socket
            .path
            .unwrap_or_else(|| self.paths.runtime_dir.join("login.sock"));
        // sockaddr_un holds 108 bytes including the terminating NUL.
        if socket_path.as_os_str().len() > 107 {
            return Err(invalid(
                "login_socket.path",
                format!(
                    "{} is longer than the 107 bytes a Unix socket path may have",
                    socket_path.display()
                ),
            ));
        }
        let socket_mode = u32::from_str_radix(self.login_socket.mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                invalid(
                    "login_socket.mode",
                    format!(
                        "{:?} is not an octal file mode such as \"0660\"",
                        self.login_socket.mode
                    ),
                )
            })?;
        if self.login_socket.group.as_deref() == Some("") {
            return Err(invalid("login_socket.group", "must not be empty when set"));
        }
        let sync_listen: SocketAddr = self.sync.listen.parse().map_err(|e| {
            invalid(
                "sync.listen",
                format!(
                    "{:?} is not an address such as 127.0.0.1:7870 ({e})",
                    self.sync.listen
                ),
            )
        })?;
        if let Some(tls) = &self.sync.tls {
            for (key, path) in [
                ("sync.tls.cert", Some(&tls.cert)),
                ("sync.tls.key", Some(&tls.key)),
                ("sync.tls.client_ca", tls.client_ca.as_ref()),
            ] {
                if let Some(path) = path
                    && !path.is_file()
                {
                    return Err(invalid(
                        key,
                        format!("{} is not a readable file", path.display()),
                    ));
                }
            }
        }
        for (key, value, min, max) in [
            (
                "login_socket.max_message_bytes",
                self.login_socket.max_message_bytes,
                1024,
                16 << 20,
            ),
            (
                "sync.max_message_bytes",
                self.sync.max_message_bytes,
                64 << 10,
                1 << 30,
            ),
            ("hashing.max_concurrent", self.hashing.max_concurrent, 1, 64),
            (
                "hashing.max_waiting_per_source",
                self.hashing.max_waiting_per_source,
                1,
                1024,
            ),
            ("hashing.max_schemes", self.hashing.max_schemes, 1, 64),
            (
                "login_socket.max_connections",
                self.login_socket.max_connections,
                1,
                65_536,
            ),
            (
                "login_socket.max_calls",
                self.login_socket.max_calls,
                1,
                65_536,
            ),
            ("sync.max_connections", self.sync.max_connections, 1, 65_536),
            ("sync.max_calls", self.sync.max_calls, 1, 65_536),
        ] {
            if !(min..=max).contains(&value) {
                return Err(invalid(key, format!("{value} is outside {min}..={max}")));
            }
        }
        if self.hashing.max_m_cost_kib < 8 {
            return Err(invalid("hashing.max_m_cost_kib", "must be at least 8"));
        }
        if self.hashing.max_t_cost == 0 || self.hashing.max_p_cost == 0 {
            return Err(invalid(
                "hashing.max_t_cost",
                "cost limits must be at least 1",
            ));
        }
        let second = Duration::from_secs(1);
        if !(1..=1000).contains(&self.lockout.max_failures) {
            return Err(invalid(
                "lockout.max_failures",
                format!("{} is outside 1..=1000", self.lockout.max_failures),
            ));
        }
        if !(1..=10_000).contains(&self.lockout.terminal_max_failures) {
            return Err(invalid(
                "lockout.terminal_max_failures",
                format!(
                    "{} is outside 1..=10000 (the terminal budget is what bounds guessing)",
                    self.lockout.terminal_max_failures
                ),
            ));
        }
        let lockout = LockoutPolicy {
            max_failures: self.lockout.max_failures,
            delay: required_duration("lockout.delay", &self.lockout.delay, second)?,
            max_delay: required_duration("lockout.max_delay", &self.lockout.max_delay, second)?,
            terminal_max_failures: self.lockout.terminal_max_failures,
            terminal_refill: required_duration(
                "lockout.terminal_refill",
                &self.lockout.terminal_refill,
                second,
            )?,
        };
        if lockout.max_delay < lockout.delay {
            return Err(invalid(
                "lockout.max_delay",
                format!(
                    "{:?} is shorter than lockout.delay {:?}",
                    self.lockout.max_delay, self.lockout.delay
                ),
            ));
        }
        let login_limits = ListenerLimits {
            max_connections: self.login_socket.max_connections,
            max_connections_per_peer: per_peer(
                "login_socket.max_connections_per_uid",
                self.login_socket.max_connections_per_uid,
                16,
                self.login_socket.max_connections,
            )?,
            max_calls: self.login_socket.max_calls,
            call_timeout: required_duration(
                "login_socket.call_timeout",
                &self.login_socket.call_timeout,
                second,
            )?,
        };
        let sync_limits = ListenerLimits {
            max_connections: self.sync.max_connections,
            max_connections_per_peer: per_peer(
                "sync.max_connections_per_peer",
                self.sync.max_connections_per_peer,
                4,
                self.sync.max_connections,
            )?,
            max_calls: self.sync.max_calls,
            call_timeout: required_duration("sync.call_timeout", &self.sync.call_timeout, second)?,
        };
        let sync_keepalive = duration("sync.keepalive", &self.sync.keepalive, true, second)?;
        let sync_auth_timeout = required_duration(
            "sync.auth_timeout",
            &self.sync.auth_timeout,
            Duration::from_millis(100),
        )?;
        if sync_auth_timeout > Duration::from_secs(600) {
            return Err(invalid(
                "sync.auth_timeout",
                format!("{:?} is over 10m", self.sync.auth_timeout),
            ));
        }
        let login_keepalive = duration(
            "login_socket.keepalive",
            &self.login_socket.keepalive,
            true,
            second,
        )?;
        for (key, value) in [
            (
                "login_socket.calls_per_second",
                self.login_socket.calls_per_second,
            ),
            ("login_socket.call_burst", self.login_socket.call_burst),
        ] {
            if !(1..=1_000_000).contains(&value) {
                return Err(invalid(key, format!("{value} is outside 1..=1000000")));
            }
        }
        let max_call_wait = match &self.login_socket.max_call_wait {
            Some(text) => required_duration("login_socket.max_call_wait", text, Duration::ZERO)?,
            None => Duration::from_secs(2).min(login_limits.call_timeout / 2),
        };
        // A wait the call timeout cuts short would end as CANCELLED instead of the clear refusal.
        if max_call_wait >= login_limits.call_timeout {
            return Err(invalid(
                "login_socket.max_call_wait",
                format!(
                    "{} must be shorter than login_socket.call_timeout {:?}",
                    humantime::format_duration(max_call_wait),
                    self.login_socket.call_timeout
                ),
            ));
        }
        let login_call_rate = crate::call_rate::CallRate {
            per_second: self.login_socket.calls_per_second,
            burst: self.login_socket.call_burst,
            max_wait: max_call_wait,
        };
        let idle_lock = duration("session.idle_lock", &self.session.idle_lock, true, second)?;
        let max_replica_age = duration("replica.max_age", &self.replica.max_age, true, second)?;
        let audit_summary_interval = required_duration(
            "audit.summary_interval",
            &self.audit.summary_interval,
            Duration::from_millis(100),
        )?;
        if self.audit.max_rows == 0 {
            return Err(invalid("audit.max_rows", "must be at least 1"));
        }
        let input = crate::hardware::InputSettings::from_config(&self.input)?;
        let permission = self.enrolment.permission.trim().to_owned();
        if permission.is_empty() {
            return Err(invalid("enrolment.permission", "must not be empty"));
        }
        if !(1..=32).contains(&self.enrolment.min_pin_len) {
            return Err(invalid(
                "enrolment.min_pin_len",
                format!("{} is not between 1 and 32", self.enrolment.min_pin_len),
            ));
        }
        let capture_timeout = duration(
            "enrolment.capture_timeout",
            &self.enrolment.capture_timeout,
            false,
            Duration::from_millis(100),
        )?
        .unwrap_or(Duration::from_secs(20));
        // A capture must end (DEADLINE_EXCEEDED, audited) before the listener cuts the call off.
        let margin = crate::enroll::capture_margin(login_limits.call_timeout);
        let max_capture_timeout = login_limits.call_timeout.saturating_sub(margin);
        if capture_timeout > max_capture_timeout {
            return Err(invalid(
                "enrolment.capture_timeout",
                format!(
                    "{:?} must be at least {} shorter than login_socket.call_timeout {:?}",
                    self.enrolment.capture_timeout,
                    humantime::format_duration(margin),
                    self.login_socket.call_timeout
                ),
            ));
        }
        let enrolment = crate::enroll::EnrolmentSettings {
            permission,
            min_pin_len: self.enrolment.min_pin_len,
            capture_timeout,
            max_capture_timeout,
        };
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(invalid("log.level", format!("{:?}: {e}", self.log.level)));
        }
        Ok(Settings {
            terminal: Terminal {
                sales_point_id,
                sub_terminal_id,
            },
            state_dir: self.paths.state_dir,
            runtime_dir: self.paths.runtime_dir,
            socket_path,
            socket_group: self.login_socket.group,
            socket_mode,
            allow_uids: self.login_socket.allow_uids,
            allow_gids: self.login_socket.allow_gids,
            admin_uids: self.login_socket.admin_uids,
            login_max_message_bytes: self.login_socket.max_message_bytes,
            sync_listen,
            sync_max_message_bytes: self.sync.max_message_bytes,
            tls: self.sync.tls,
            max_concurrent_hashes: self.hashing.max_concurrent,
            max_waiting_per_source: self.hashing.max_waiting_per_source,
            login_limits,
            sync_limits,
            sync_keepalive,
            sync_auth_timeout,
            login_call_rate,
            login_keepalive,
            cost_limits: CostLimits {
                max_m_cost_kib: self.hashing.max_m_cost_kib,
                max_t_cost: self.hashing.max_t_cost,
                max_p_cost: self.hashing.max_p_cost,
            },
            max_schemes: self.hashing.max_schemes,
            policy: PolicySettings {
                lockout,
                max_replica_age,
                audit_max_rows: self.audit.max_rows,
                audit_summary_interval,
            },
            session: SessionPolicy {
                idle_lock,
                on_key_removal: match self.session.on_key_removal {
                    KeyRemovalConfig::Lock => KeyRemoval::Lock,
                    KeyRemovalConfig::Logout => KeyRemoval::Logout,
                },
            },
            log_format: self.log.format,
            live: LiveSettings {
                log_level: self.log.level,
            },
            input,
            enrolment,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn enrolment_settings_default_and_are_checked() {
        let s = Config::parse("[terminal]\nsales_point_id = \"sp\"\n")
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(s.enrolment.permission, "user.credentials.manage");
        assert_eq!(s.enrolment.min_pin_len, 4);
        assert_eq!(s.enrolment.capture_timeout, Duration::from_secs(20));
        assert_eq!(s.enrolment.max_capture_timeout, Duration::from_secs(28));
        let parse = |section: &str| {
            Config::parse(&format!(
                "[terminal]\nsales_point_id = \"sp\"\n[enrolment]\n{section}"
            ))
            .unwrap()
            .validate()
        };
        let s = parse(
            "permission = \"keys.assign\"\nmin_pin_len = 6\ncapture_timeout = \"2m\"\n\
             [login_socket]\ncall_timeout = \"3m\"\n",
        )
        .unwrap();
        assert_eq!(
            (s.enrolment.permission.as_str(), s.enrolment.min_pin_len),
            ("keys.assign", 6)
        );
        assert_eq!(s.enrolment.capture_timeout, Duration::from_secs(120));
        for (bad, key) in [
            ("permission = \" \"\n", "enrolment.permission"),
            ("min_pin_len = 0\n", "enrolment.min_pin_len"),
            ("capture_timeout = \"soon\"\n", "enrolment.capture_timeout"),
            // Not shorter than the default login_socket.call_timeout (30s) by the margin.
            ("capture_timeout = \"29s\"\n", "enrolment.capture_timeout"),
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.starts_with(&format!("config key {key}")), "{err}");
        }
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let s = Config::parse("[terminal]\nsales_point_id = \"sp-1\"\n")
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(s.terminal.sales_point_id, "sp-1");
        assert_eq!(s.socket_path, PathBuf::from("/run/tillgate/login.sock"));
        assert_eq!(
            s.database_path(),
            PathBuf::from("/var/lib/tillgate/replica.db")
        );
        assert_eq!(s.socket_mode, 0o660);
        assert_eq!(s.sync_listen.to_string(), DEFAULT_SYNC_LISTEN);
        assert_eq!(s.policy.lockout, LockoutPolicy::default());
        assert_eq!(s.policy.lockout.max_failures, 5);
        assert_eq!(s.policy.lockout.terminal_refill, Duration::from_secs(1200));
        assert_eq!(s.max_waiting_per_source, 4);
        assert_eq!(s.max_schemes, 4);
        assert_eq!(
            s.login_limits,
            ListenerLimits {
                max_connections: 64,
                max_connections_per_peer: 16,
                max_calls: 128,
                call_timeout: Duration::from_secs(30)
            }
        );
        assert_eq!(s.sync_limits.max_connections_per_peer, 4);
        assert_eq!(s.sync_auth_timeout, Duration::from_secs(10));
        assert_eq!(
            s.login_call_rate,
            crate::call_rate::CallRate {
                per_second: 50,
                burst: 100,
                max_wait: Duration::from_secs(2)
            }
        );
        assert_eq!(s.login_keepalive, Some(Duration::from_secs(30)));
        assert_eq!(s.policy.max_replica_age, None);
        assert_eq!(s.policy.audit_max_rows, 100_000);
        assert_eq!(s.session.idle_lock, Some(Duration::from_secs(300)));
        assert_eq!(s.session.on_key_removal, KeyRemoval::Logout);
        assert_eq!(s.live.log_level, "info");
    }

    #[test]
    fn per_peer_caps_default_below_the_listener_cap_and_may_not_exceed_it() {
        let base = "[terminal]\nsales_point_id = \"a\"\n";
        let settings = |extra: &str| Config::parse(&format!("{base}{extra}")).unwrap().validate();
        // A lowered listener cap lowers the default share with it.
        let s =
            settings("[login_socket]\nmax_connections = 2\n[sync]\nmax_connections = 1\n").unwrap();
        assert_eq!(s.login_limits.max_connections_per_peer, 2);
        assert_eq!(s.sync_limits.max_connections_per_peer, 1);
        let s = settings(
            "[login_socket]\nmax_connections_per_uid = 3\ncalls_per_second = 5\ncall_burst = 7\n\
             max_call_wait = \"0s\"\nkeepalive = \"off\"\n\
             [sync]\nmax_connections_per_peer = 16\nauth_timeout = \"1s\"\n",
        )
        .unwrap();
        assert_eq!(s.login_limits.max_connections_per_peer, 3);
        assert_eq!(s.sync_limits.max_connections_per_peer, 16);
        assert_eq!(s.sync_auth_timeout, Duration::from_secs(1));
        assert_eq!(s.login_call_rate.burst, 7);
        assert_eq!(s.login_call_rate.max_wait, Duration::ZERO);
        assert_eq!(s.login_keepalive, None);
        // A short call timeout shortens the default wait with it.
        let s = settings(
            "[login_socket]\ncall_timeout = \"2s\"\n[enrolment]\ncapture_timeout = \"1s\"\n",
        )
        .unwrap();
        assert_eq!(s.login_call_rate.max_wait, Duration::from_secs(1));
        for (extra, message) in [
            (
                "[login_socket]\nmax_connections_per_uid = 65\n",
                "config key login_socket.max_connections_per_uid: 65 is more than the listener's max_connections (64)",
            ),
            (
                "[sync]\nmax_connections = 8\nmax_connections_per_peer = 9\n",
                "config key sync.max_connections_per_peer: 9 is more than the listener's max_connections (8)",
            ),
            (
                "[sync]\nmax_connections_per_peer = 0\n",
                "config key sync.max_connections_per_peer: must be at least 1",
            ),
            (
                "[login_socket]\ncalls_per_second = 0\n",
                "config key login_socket.calls_per_second: 0 is outside 1..=1000000",
            ),
            (
                "[login_socket]\ncall_burst = 0\n",
                "config key login_socket.call_burst: 0 is outside 1..=1000000",
            ),
            (
                "[login_socket]\nmax_call_wait = \"30s\"\n",
                "config key login_socket.max_call_wait: 30s must be shorter than login_socket.call_timeout \"30s\"",
            ),
            (
                "[sync]\nauth_timeout = \"10ms\"\n",
                "config key sync.auth_timeout:",
            ),
            (
                "[sync]\nauth_timeout = \"1h\"\n",
                "config key sync.auth_timeout: \"1h\" is over 10m",
            ),
        ] {
            let error = settings(extra).unwrap_err().to_string();
            assert!(error.starts_with(message), "{extra}: {error}");
        }
    }

    #[test]
    fn policy_keys_parse_and_name_the_key_on_errors() {
        let base = "[terminal]\nsales_point_id = \"a\"\n";
        let s = Config::parse(&format!(
            "{base}[lockout]\nmax_failures = 3\nterminal_max_failures = 30\nterminal_refill = \"2m\"\ndelay = \"10s\"\nmax_delay = \"1h\"\n\
             [session]\nidle_lock = \"off\"\non_key_removal = \"lock\"\n[audit]\nmax_rows = 50\n[replica]\nmax_age = \"72h\"\n"
        ))
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!(
            s.policy.lockout,
            LockoutPolicy {
                max_failures: 3,
                terminal_max_failures: 30,
                terminal_refill: Duration::from_secs(120),
                delay: Duration::from_secs(10),
                max_delay: Duration::from_secs(3600),
            }
        );
        assert_eq!(s.session.idle_lock, None);
        assert_eq!(s.session.on_key_removal, KeyRemoval::Lock);
        assert_eq!(s.policy.audit_max_rows, 50);
        assert_eq!(
            s.policy.max_replica_age,
            Some(Duration::from_secs(72 * 3600))
        );

        for (extra, key) in [
            (
                "[lockout]\nterminal_refill = \"soon\"\n",
                "config key lockout.terminal_refill:",
            ),
            (
                "[lockout]\nterminal_refill = \"off\"\n",
                "config key lockout.terminal_refill:",
            ),
            (
                "[lockout]\nterminal_max_failures = 0\n",
                "config key lockout.terminal_max_failures:",
            ),
            (
                "[hashing]\nmax_waiting_per_source = 0\n",
                "config key hashing.max_waiting_per_source:",
            ),
            (
                "[login_socket]\ncall_timeout = \"0s\"\n",
                "config key login_socket.call_timeout:",
            ),
            (
                "[lockout]\nmax_failures = 0\n",
                "config key lockout.max_failures:",
            ),
            (
                "[lockout]\ndelay = \"10m\"\nmax_delay = \"1m\"\n",
                "config key lockout.max_delay:",
            ),
            (
                "[session]\nidle_lock = \"10ms\"\n",
                "config key session.idle_lock:",
            ),
            (
                "[replica]\nmax_age = \"-1\"\n",
                "config key replica.max_age:",
            ),
            ("[audit]\nmax_rows = 0\n", "config key audit.max_rows:"),
        ] {
            let err = Config::parse(&format!("{base}{extra}"))
                .unwrap()
                .validate()
                .unwrap_err();
            assert!(err.to_string().starts_with(key), "{extra}: {err}");
        }
        let err =
            Config::parse(&format!("{base}[session]\non_key_removal = \"eject\"\n")).unwrap_err();
        assert!(err.to_string().contains("unknown variant `eject`"), "{err}");
    }

    #[test]
    fn restart_only_changes_name_the_keys() {
        let parse = |text: &str| Config::parse(text).unwrap().validate().unwrap();
        let base = parse("[terminal]\nsales_point_id = \"sp-1\"\n");
        let same_but_level =
            parse("[terminal]\nsales_point_id = \"sp-1\"\n[log]\nlevel = \"debug\"\n");
        assert!(base.restart_only_changes(&same_but_level).is_empty());
        assert_ne!(base.live, same_but_level.live);
        let moved = parse(
            "[terminal]\nsales_point_id = \"sp-2\"\n[sync]\nlisten = \"127.0.0.1:7999\"\n\
             [log]\nformat = \"json\"\n",
        );
        assert_eq!(
            base.restart_only_changes(&moved),
            vec!["terminal.sales_point_id", "sync.listen", "log.format"]
        );
        let reader = parse(
            "[terminal]\nsales_point_id = \"sp-1\"\n\
             [[input.serial]]\npath = \"/dev/ttyUSB0\"\n",
        );
        assert!(
            base.restart_only_changes(&reader).is_empty(),
            "input rules reload live"
        );
        let policy = parse(
            "[terminal]\nsales_point_id = \"sp-1\"\n[lockout]\nmax_failures = 3\n\
             [session]\nidle_lock = \"off\"\n[replica]\nmax_age = \"1h\"\n",
        );
        assert_eq!(
            base.restart_only_changes(&policy),
            vec!["lockout.*", "session.idle_lock", "replica.max_age"]
        );
    }

    #[test]
    fn errors_name_the_key() {
        let err = Config::parse("[terminal]\nsales_point_id = \"\"\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "config key terminal.sales_point_id: must not be empty"
        );

        let err =
            Config::parse("[terminal]\nsales_point_id = \"a\"\n[sync]\nlisten = \"nowhere\"\n")
                .unwrap()
                .validate()
                .unwrap_err();
        assert!(
            err.to_string().starts_with("config key sync.listen:"),
            "{err}"
        );

        let err =
            Config::parse("[terminal]\nsales_point_id = \"a\"\n[login_socket]\nmode = \"999\"\n")
                .unwrap()
                .validate()
                .unwrap_err();
        assert!(
            err.to_string().starts_with("config key login_socket.mode:"),
            "{err}"
        );

        let err =
            Config::parse("[terminal]\nsales_point_id = \"a\"\nsales_pont = 1\n").unwrap_err();
        assert!(
            err.to_string().contains("unknown field `sales_pont`"),
            "{err}"
        );

        let err = Config::parse("[terminal]\nsales_point_id = \"a\"\n[log]\nformat = \"xml\"\n")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "config file <inline>: line 4, column 10: unknown variant `xml`, expected `text` or `json`"
        );

        let err = Config::parse("[paths]\nstate_dir = \"/x\"\n").unwrap_err();
        assert!(
            err.to_string().contains("missing field `terminal`"),
            "{err}"
        );
    }
}
