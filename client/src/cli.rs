//! `tillctl`: operate a tillgated from the terminal, and push account exports as central would.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Args, Parser, Subcommand};
use zeroize::Zeroizing;

use crate::export::{Account, AccountHasher, ChangesExport, SnapshotExport};
use crate::proto as pb;
use crate::{
    ClientError, Credential, DEFAULT_SOCKET, DEFAULT_SYNC_ADDR, PinApproval, SyncTls, TillClient,
    TillSyncClient, cursor_from_status, retry_after_from_status,
};

/// `println!` that ends the process quietly when stdout is gone (`tillctl watch | head`)
/// instead of panicking on the broken pipe.
macro_rules! out {
    ($($arg:tt)*) => {
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            stdout_failed(e)
        }
    };
}

fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("tillctl: writing to stdout: {e}");
    std::process::exit(2);
}

#[derive(Debug, Parser)]
#[command(
    name = "tillctl",
    version,
    about = "Operate tillgated: sessions, status, sync pushes, tokens, lockouts, audit, explain"
)]
pub struct Cli {
    /// The daemon's login socket.
    #[arg(long, global = true, env = "TILLGATE_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct SyncTarget {
    /// The daemon's sync endpoint, e.g. http://127.0.0.1:7870 or https://till-7:7870.
    #[arg(long, env = "TILLGATE_SYNC_ADDR", default_value = DEFAULT_SYNC_ADDR, global = true)]
    pub sync_addr: String,
    /// Sync bearer token (prefer TILLGATE_TOKEN or --token-file: argv is visible to other users).
    #[arg(long, env = "TILLGATE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// File holding the sync bearer token.
    #[arg(long, conflicts_with = "token", global = true)]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) to verify the daemon's TLS certificate.
    #[arg(long, global = true)]
    pub tls_ca: Option<PathBuf>,
    /// Name expected in the daemon's certificate (defaults to the host in --sync-addr).
    #[arg(long, global = true)]
    pub tls_domain: Option<String>,
    /// Client certificate and key (PEM) for mutual TLS.
    #[arg(long, requires = "tls_key", global = true)]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert", global = true)]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Replica cursor, user counts, last sync and listeners.
    Status,
    /// Log in with a PIN (prompted without echo, or read from stdin) or a key id.
    Login {
        /// Read a PIN.
        #[arg(long, conflicts_with = "key", required_unless_present = "key")]
        pin: bool,
        /// Log in with a key id; without a value it is read like a PIN (argv is visible to others).
        #[arg(long, num_args = 0..=1, default_missing_value = "")]
        key: Option<String>,
    },
    /// End the current session.
    Logout,
    /// Show the current session.
    Session,
    /// Follow session events (login, logout, ...) until interrupted.
    Watch,
    /// Does the current user hold PERMISSION? Exit 0 if so, 1 if not.
    Can { permission: String },
    /// Manager override: does the user of a PIN or key hold PERMISSION? Exit 0 if so, 1 if not.
    /// The current session is not changed.
    Authorize {
        permission: String,
        /// Read a PIN.
        #[arg(long, conflicts_with = "key", required_unless_present = "key")]
        pin: bool,
        /// Use a key id; without a value it is read like a PIN.
        #[arg(long, num_args = 0..=1, default_missing_value = "")]
        key: Option<String>,
    },
    /// Enrol a key for USER: the next key presented on a reader is captured (not a login) and
    /// printed as the PHC string central assigns to USER. Approved by a manager's PIN or key
    /// (--manager-pin / --manager-key), or by running as an admin uid.
    EnrollKey {
        user: String,
        /// The reader's name or path as `tillctl devices` shows it; default: any key reader.
        #[arg(long)]
        reader: Option<String>,
        /// Seconds to wait for the key; default: the daemon's enrolment.capture_timeout.
        #[arg(long, default_value_t = 0)]
        timeout: u32,
        #[command(flatten)]
        manager: ManagerApproval,
    },
    /// Set a new PIN for USER (prompted twice, or two lines on stdin), printed as the PHC string
    /// central assigns to USER. Approved by USER's current PIN (--current-pin), by USER's open
    /// session (--session), by a manager (--manager-pin / --manager-key), or by an admin uid.
    ChangePin {
        user: String,
        /// Read USER's current PIN first.
        #[arg(long, conflicts_with_all = ["session", "manager_pin", "manager_key"])]
        current_pin: bool,
        /// The open, unlocked session is USER's.
        #[arg(long, conflicts_with_all = ["manager_pin", "manager_key"])]
        session: bool,
        #[command(flatten)]
        manager: ManagerApproval,
    },
    /// Clear failed-attempt lockouts: of SOURCE (as `lockouts` shows it), or of every source
    /// (admin uids only).
    Unlock { source: Option<String> },
    /// Sources with failed attempts or a running lockout (admin uids only).
    Lockouts,
    /// The newest audit rows, oldest first (admin uids only).
    Audit {
        /// How many rows (at most 1000).
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: u32,
    },
    /// Why USER can or cannot log in at this terminal; exit 0 if they can, 1 if not (admin uids
    /// only).
    Explain { user: String },
    /// Users at this terminal sharing a PIN or a key, and who wins (admin uids only).
    Collisions,
    /// Push an account export to the sync endpoint.
    Push {
        #[command(subcommand)]
        what: PushCommand,
        #[command(flatten)]
        target: SyncTarget,
    },
    /// Show the replica's sync state through the sync endpoint (as central sees it).
    SyncState {
        #[command(flatten)]
        target: SyncTarget,
    },
    /// Print the argon2id PHC string of one secret read from stdin, as central computes it.
    Hash {
        /// Account id the salt is derived from.
        #[arg(long, default_value = "default")]
        account: String,
        /// Explicit account salt (PHC base64).
        #[arg(long)]
        salt: Option<String>,
    },
    /// List input devices: name, vendor:product, phys, links, matching rule, grab state.
    Devices {
        /// Follow attach/detach and framed input live (masked) instead of listing.
        #[arg(long)]
        watch: bool,
    },
    /// Manage sync tokens (admin uids only).
    Token {
        #[command(subcommand)]
        action: TokenCommand,
    },
}

/// A manager's credential approving an enrolment, read like a PIN.
#[derive(Debug, clap::Args)]
pub struct ManagerApproval {
    /// Read a manager's PIN first.
    #[arg(long, conflicts_with = "manager_key")]
    pub manager_pin: bool,
    /// A manager's key id; without a value it is read like a PIN (argv is visible to others).
    #[arg(long, num_args = 0..=1, default_missing_value = "")]
    pub manager_key: Option<String>,
}

impl ManagerApproval {
    /// The manager's credential, read now; None: no manager (the caller is an admin uid).
    fn read(self) -> Result<Option<(bool, Zeroizing<String>)>, ClientError> {
        if !self.manager_pin && self.manager_key.is_none() {
            return Ok(None);
        }
        let is_pin = self.manager_pin;
        let prompt = if is_pin {
            "Manager PIN: "
        } else {
            "Manager key id: "
        };
        let secret = match self.manager_key {
            Some(key) if !key.is_empty() => read_credential(false, Some(key))?,
            _ => read_secret(prompt)?,
        };
        Ok(Some((is_pin, secret)))
    }
}

fn as_credential(approver: &Option<(bool, Zeroizing<String>)>) -> Option<Credential<'_>> {
    approver.as_ref().map(|(is_pin, secret)| {
        if *is_pin {
            Credential::Pin(secret)
        } else {
            Credential::Key(secret)
        }
    })
}

fn print_enrolled(enrolled: &pb::EnrolledCredential) {
    let kind = match pb::LoginMethod::try_from(enrolled.kind) {
        Ok(pb::LoginMethod::Key) => "key",
        Ok(pb::LoginMethod::Pin) => "PIN",
        _ => "credential",
    };
    out!("enrolled {kind} for {}", enrolled.user_id);
    out!("    authorized by: {}", enrolled.authorized_by);
    if !enrolled.reader.is_empty() {
        out!("    reader:        {}", enrolled.reader);
    }
    out!("    phc:           {}", enrolled.phc);
    if enrolled.holders.is_empty() {
        out!("    held by:       nobody else in the replica");
    } else {
        out!(
            "    held by:       {} (already: a shared {kind})",
            enrolled.holders.join(", ")
        );
    }
    out!(
        "central assigns this PHC string to {} and pushes it back; until then the replica is unchanged",
        enrolled.user_id
    );
}

#[derive(Debug, Subcommand)]
pub enum PushCommand {
    /// Replace the replica with FILE (JSON snapshot export).
    Snapshot { file: PathBuf },
    /// Apply the incremental batch in FILE (JSON changes export).
    Changes { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it once.
    Create { name: String },
    /// List token names and creation times.
    List,
    /// Revoke a token.
    Revoke { name: String },
}

/// Entry point of the `tillctl` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tillctl: cannot start runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tillctl: {e}");
            if let ClientError::Rpc(status) = &e
                && let Some(cursor) = cursor_from_status(status)
            {
                eprintln!(
                    "tillctl: replica cursor is {}:{}",
                    cursor.epoch, cursor.revision
                );
            }
            if let ClientError::Rpc(status) = &e
                && let Some(wait) = retry_after_from_status(status)
            {
                eprintln!("tillctl: retry in {}", humantime::format_duration(wait));
            }
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, ClientError> {
    match cli.command {
        Command::Status => {
            let status = TillClient::connect(&cli.socket).await?.status().await?;
            print_status(&status);
        }
        Command::Login { pin, key } => {
            let mut client = TillClient::connect(&cli.socket).await?;
            let secret = read_credential(pin, key)?;
            let session = if pin {
                client.login_with_pin(&secret).await?
            } else {
                client.login_with_key(&secret).await?
            };
            print_session(&session);
        }
        Command::Authorize {
            permission,
            pin,
            key,
        } => {
            let mut client = TillClient::connect(&cli.socket).await?;
            let secret = read_credential(pin, key)?;
            let credential = if pin {
                Credential::Pin(&secret)
            } else {
                Credential::Key(&secret)
            };
            let answer = client.authorize(credential, &permission).await?;
            let who = answer
                .authorizer
                .as_ref()
                .map(|u| format!("{} ({} {})", u.id, u.first_name, u.last_name))
                .unwrap_or_default();
            out!(
                "{}: {who} {permission}",
                if answer.granted { "granted" } else { "denied" }
            );
            if !answer.granted {
                return Ok(ExitCode::from(1));
            }
        }
        Command::EnrollKey {
            user,
            reader,
            timeout,
            manager,
        } => {
            let approver = manager.read()?;
            let mut client = TillClient::connect(&cli.socket).await?;
            let place = reader.as_deref().unwrap_or("any key reader");
            eprintln!("tillctl: present the key for {user} on {place}");
            let enrolled = client
                .enroll_key(
                    &user,
                    as_credential(&approver),
                    reader.as_deref().unwrap_or(""),
                    timeout,
                )
                .await?;
            print_enrolled(&enrolled);
        }
        Command::ChangePin {
            user,
            current_pin,
            session,
            manager,
        } => {
            let current = if current_pin {
                Some(read_secret(&format!("Current PIN of {user}: "))?)
            } else {
                None
            };
            let approver = manager.read()?;
            let new_pin = read_secret(&format!("New PIN for {user}: "))?;
            let again = read_secret("New PIN again: ")?;
            let approval = match (&current, session, as_credential(&approver)) {
                (Some(pin), _, _) => PinApproval::CurrentPin(pin),
                (None, true, _) => PinApproval::Session,
                (None, false, Some(credential)) => PinApproval::Manager(credential),
                (None, false, None) => PinApproval::AdminUid,
            };
            let enrolled = TillClient::connect(&cli.socket)
                .await?
                .change_pin(&user, &new_pin, &again, approval)
                .await?;
            print_enrolled(&enrolled);
        }
        Command::Unlock { source } => {
            let cleared = TillClient::connect(&cli.socket)
                .await?
                .unlock(source.as_deref().unwrap_or(""))
                .await?;
            if cleared.is_empty() {
                out!("nothing to clear");
            } else {
                out!("cleared {}", cleared.join(", "));
            }
        }
        Command::Lockouts => {
            let lockouts = TillClient::connect(&cli.socket).await?.lockouts().await?;
            if lockouts.is_empty() {
                out!("no failed attempts");
            }
            for l in lockouts {
                print_lockout(&l);
            }
        }
        Command::Audit { limit } => {
            let tail = TillClient::connect(&cli.socket)
                .await?
                .audit_tail(limit)
                .await?;
            out!(
                "backlog: {} rows not yet acknowledged by central ({})",
                tail.backlog,
                tail.audit_status
            );
            for event in &tail.events {
                print_audit(event);
            }
        }
        Command::Explain { user } => {
            let explanation = TillClient::connect(&cli.socket)
                .await?
                .explain(&user)
                .await?;
            print_explanation(&explanation);
            if !explanation.can_log_in {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Collisions => {
            let report = TillClient::connect(&cli.socket).await?.collisions().await?;
            print_collisions(&report);
        }
        Command::Logout => match TillClient::connect(&cli.socket).await?.logout().await? {
            Some(ended) => out!("logged out {}", user_label(&ended)),
            None => out!("nobody was logged in"),
        },
        Command::Session => match TillClient::connect(&cli.socket).await?.session().await? {
            Some(session) => print_session(&session),
            None => out!("nobody is logged in"),
        },
        Command::Watch => {
            let mut stream = TillClient::connect(&cli.socket).await?.watch().await?;
            while let Some(event) = stream.message().await? {
                print_event(&event);
            }
        }
        Command::Can { permission } => {
            let answer = TillClient::connect(&cli.socket)
                .await?
                .check_permission(&permission)
                .await?;
            if answer.user_id.is_empty() {
                out!("denied: nobody is logged in");
            } else {
                out!(
                    "{}: {} {}",
                    if answer.granted { "granted" } else { "denied" },
                    answer.user_id,
                    permission
                );
            }
            if !answer.granted {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Push { what, target } => {
            let mut sync = connect_sync(&target).await?;
            let result = match what {
                PushCommand::Snapshot { file } => {
                    let export = SnapshotExport::parse(&read_file(&file)?)?;
                    sync.apply_snapshot(export.into_snapshot()?).await?
                }
                PushCommand::Changes { file } => {
                    let export = ChangesExport::parse(&read_file(&file)?)?;
                    sync.apply_changes(export.into_batch()?).await?
                }
            };
            let cursor = result.cursor.unwrap_or_default();
            out!(
                "{} at {}:{} ({} users, {} roles)",
                if result.applied {
                    "applied"
                } else {
                    "already applied"
                },
                cursor.epoch,
                cursor.revision,
                result.users,
                result.roles
            );
        }
        Command::SyncState { target } => {
            let state = connect_sync(&target).await?.state().await?;
            let cursor = state.cursor.unwrap_or_default();
            out!("cursor:            {}:{}", cursor.epoch, cursor.revision);
            out!("status:            {}", state.status);
            out!(
                "users:             {} ({} at this terminal)",
                state.users,
                state.users_at_terminal
            );
            out!("roles:             {}", state.roles);
            out!(
                "last sync:         {}",
                time_label(state.last_sync_at.as_ref())
            );
            out!("version:           {}", state.version);
            out!(
                "audit backlog:     {} (cap {}; {})",
                state.audit_backlog,
                state.audit_max_rows,
                state.audit_status
            );
            out!(
                "audit stream:      {} (since {}; {})",
                state.audit_stream_id,
                time_label(state.audit_stream_started_at.as_ref()),
                state.audit_stream_origin
            );
            out!(
                "session:           {}",
                match (state.session_user_id.as_str(), state.session_locked) {
                    ("", _) => "nobody logged in".to_owned(),
                    (user, true) => format!("{user} (locked)"),
                    (user, false) => user.to_owned(),
                }
            );
            if state.replica_stale {
                out!("replica:           STALE (logins refused until central syncs)");
            }
            if state.disk_full {
                out!("state:             DISK FULL (logins refused until space is freed)");
            }
            out!(
                "input devices:     {} ({} being read)",
                state.input_devices.len(),
                state.input_devices.iter().filter(|d| d.attached).count()
            );
            for d in &state.input_devices {
                let role = if d.role.is_empty() {
                    "unused"
                } else {
                    d.role.as_str()
                };
                out!(
                    "  {} [{} {role}] {}{}",
                    d.name,
                    d.kind,
                    d.path,
                    if d.attached { "" } else { " (not read)" }
                );
            }
            out!("lockouts:          {}", state.lockouts.len());
            for l in &state.lockouts {
                print!("  ");
                print_lockout(l);
            }
        }
        Command::Hash { account, salt } => {
            let secret = read_secret("Secret: ")?;
            let hasher = AccountHasher::new(&Account {
                id: account,
                account_salt: salt,
                m_cost_kib: None,
                t_cost: None,
                p_cost: None,
            })?;
            out!("{}", hasher.hash(&secret)?);
        }
        Command::Devices { watch } => {
            let mut client = TillClient::connect(&cli.socket).await?;
            if watch {
                let mut stream = client.watch_input().await?;
                eprintln!("following input activity (Ctrl-C to stop)");
                while let Some(activity) = stream.message().await? {
                    print_activity(&activity);
                }
            } else {
                let devices = client.list_devices().await?;
                if devices.is_empty() {
                    out!(
                        "no input devices seen (no [input] rules or serial readers configured, or none present)"
                    );
                }
                for device in devices {
                    print_device(&device);
                }
            }
        }
        Command::Token { action } => {
            let mut client = TillClient::connect(&cli.socket).await?;
            match action {
                TokenCommand::Create { name } => {
                    let created = client.create_token(&name).await?;
                    eprintln!(
                        "token {:?} created; it is shown only this once:",
                        created.name
                    );
                    out!("{}", created.token);
                }
                TokenCommand::List => {
                    for token in client.list_tokens().await? {
                        out!(
                            "{}\tcreated {}",
                            token.name,
                            time_label(token.created_at.as_ref())
                        );
                    }
                }
                TokenCommand::Revoke { name } => {
                    if client.revoke_token(&name).await? {
                        out!("revoked {name}");
                    } else {
                        out!("no token named {name}");
                        return Ok(ExitCode::from(1));
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn connect_sync(target: &SyncTarget) -> Result<TillSyncClient, ClientError> {
    let token = match (&target.token, &target.token_file) {
        (Some(token), _) => Some(Zeroizing::new(token.clone())),
        (None, Some(path)) => Some(Zeroizing::new(read_file(path)?.trim().to_owned())),
        (None, None) => None,
    };
    let tls = if target.tls_ca.is_some()
        || target.tls_cert.is_some()
        || target.sync_addr.starts_with("https://")
    {
        Some(SyncTls {
            ca_pem: target.tls_ca.as_ref().map(read_bytes).transpose()?,
            domain: target.tls_domain.clone(),
            identity: match (&target.tls_cert, &target.tls_key) {
                (Some(cert), Some(key)) => Some((read_bytes(cert)?, read_bytes(key)?)),
                _ => None,
            },
        })
    } else {
        None
    };
    TillSyncClient::connect(&target.sync_addr, token.as_deref().map(|t| t.as_str()), tls).await
}

fn read_file(path: &PathBuf) -> Result<String, ClientError> {
    std::fs::read_to_string(path)
        .map_err(|e| ClientError::Config(format!("{}: {e}", path.display())))
}

fn read_bytes(path: &PathBuf) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|e| ClientError::Config(format!("{}: {e}", path.display())))
}

/// The PIN (`--pin`) or key id (`--key [ID]`) of a login or authorization.
fn read_credential(pin: bool, key: Option<String>) -> Result<Zeroizing<String>, ClientError> {
    if pin {
        return read_secret("PIN: ");
    }
    match key {
        Some(k) if !k.is_empty() => {
            eprintln!(
                "tillctl: warning: a key id on the command line is visible to other users; omit the value to be prompted"
            );
            Ok(Zeroizing::new(k))
        }
        _ => read_secret("Key id: "),
    }
}

/// Reads a secret without echo from the terminal, or one line from stdin when piped.
fn read_secret(prompt: &str) -> Result<Zeroizing<String>, ClientError> {
    let secret = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(prompt)
            .map_err(|e| ClientError::Config(format!("reading from the terminal: {e}")))?
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| ClientError::Config(format!("reading stdin: {e}")))?;
        line
    };
    let secret = Zeroizing::new(secret);
    let trimmed = Zeroizing::new(secret.trim_end_matches(['\r', '\n']).to_owned());
    if trimmed.is_empty() {
        return Err(ClientError::Config("nothing was entered".into()));
    }
    let _ = std::io::stderr().flush();
    Ok(trimmed)
}

fn time_label(ts: Option<&prost_types::Timestamp>) -> String {
    ts.and_then(|t| SystemTime::try_from(*t).ok())
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_else(|| "never".into())
}

fn user_label(session: &pb::Session) -> String {
    session
        .user
        .as_ref()
        .map(|u| format!("{} ({} {})", u.id, u.first_name, u.last_name))
        .unwrap_or_default()
}

fn print_session(session: &pb::Session) {
    let method = match pb::LoginMethod::try_from(session.method) {
        Ok(pb::LoginMethod::Pin) => "pin",
        Ok(pb::LoginMethod::Key) => "key",
        _ => "?",
    };
    let replica = session.replica.unwrap_or_default();
    out!("user:        {}", user_label(session));
    out!("session:     {}", session.session_id);
    out!("method:      {method}");
    out!("started:     {}", time_label(session.started_at.as_ref()));
    if session.locked {
        out!("locked:      yes (the same user's PIN or key resumes it)");
    }
    out!("roles:       {}", session.role_ids.join(", "));
    out!("permissions: {}", session.permissions.join(", "));
    out!(
        "replica:     {}:{} (last sync {})",
        replica.epoch,
        replica.revision,
        time_label(session.last_sync_at.as_ref())
    );
}

fn print_event(event: &pb::SessionEvent) {
    let kind = pb::SessionEventKind::try_from(event.kind)
        .map(|k| {
            k.as_str_name()
                .trim_start_matches("SESSION_EVENT_KIND_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| "unknown".into());
    let who = event
        .session
        .as_ref()
        .or(event.previous.as_ref())
        .map(user_label)
        .unwrap_or_else(|| "nobody".into());
    let reason = if event.reason.is_empty() {
        String::new()
    } else {
        format!(" ({})", event.reason)
    };
    out!(
        "#{} {} {kind} {who}{reason}",
        event.sequence,
        time_label(event.at.as_ref())
    );
    let _ = std::io::stdout().flush();
}

fn print_device(device: &pb::InputDevice) {
    let state = match (device.attached, device.grabbed, &device.last_seen) {
        (true, true, _) => "attached, grabbed".to_owned(),
        (true, false, _) => "attached".to_owned(),
        (false, _, Some(seen)) => format!("detached, last seen {}", time_label(Some(seen))),
        (false, _, None) if device.rule.is_empty() => "no rule matches: not read".to_owned(),
        (false, _, None) => "not attached".to_owned(),
    };
    out!("{} [{}] {}", device.path, device.kind, device.name);
    if !device.vendor_product.is_empty() {
        out!("    id:      {}", device.vendor_product);
    }
    if !device.phys.is_empty() {
        out!("    phys:    {}", device.phys);
    }
    if !device.uniq.is_empty() {
        out!("    uniq:    {}", device.uniq);
    }
    for link in &device.links {
        out!("    link:    {link}");
    }
    out!(
        "    rule:    {}",
        if device.rule.is_empty() {
            "-"
        } else {
            &device.rule
        }
    );
    out!("    state:   {state}");
    if !device.error.is_empty() {
        out!("    error:   {}", device.error);
    }
}

fn print_activity(activity: &pb::InputActivity) {
    let kind = pb::InputActivityKind::try_from(activity.kind)
        .map(|k| {
            k.as_str_name()
                .trim_start_matches("INPUT_ACTIVITY_KIND_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| "unknown".into());
    out!(
        "{} {} ({}) {kind} {} {}",
        time_label(activity.at.as_ref()),
        activity.device,
        activity.path,
        activity.masked,
        activity.outcome
    );
    let _ = std::io::stdout().flush();
}

fn print_status(status: &pb::DaemonStatus) {
    let cursor = status.cursor.unwrap_or_default();
    let terminal = if status.sub_terminal_id.is_empty() {
        status.sales_point_id.clone()
    } else {
        format!("{} / {}", status.sales_point_id, status.sub_terminal_id)
    };
    out!("terminal:    {terminal}");
    out!(
        "replica:     {}:{} ({})",
        cursor.epoch,
        cursor.revision,
        status.replica_status
    );
    out!(
        "users:       {} ({} active at this terminal)",
        status.users,
        status.users_at_terminal
    );
    out!("roles:       {}", status.roles);
    out!("last sync:   {}", time_label(status.last_sync_at.as_ref()));
    out!("login:       {}", status.login_socket);
    out!(
        "sync:        {}{}",
        status.sync_listen,
        if status.sync_tls { " (TLS)" } else { "" }
    );
    out!("version:     {}", status.version);
    if status.disk_full {
        out!("state:       DISK FULL: logins refused (UNAVAILABLE) until space is freed");
    }
}

fn print_lockout(l: &pb::LockoutState) {
    let until = match &l.locked_until {
        Some(t) => format!("PIN entry locked until {}", time_label(Some(t))),
        None => "not locked".to_owned(),
    };
    out!(
        "{}\t{} failures in the window, {} lockouts\t{until}",
        l.source,
        l.failures,
        l.strikes
    );
}

fn method_label(method: i32) -> &'static str {
    match pb::LoginMethod::try_from(method) {
        Ok(pb::LoginMethod::Pin) => "pin",
        Ok(pb::LoginMethod::Key) => "key",
        _ => "-",
    }
}

fn print_audit(e: &pb::AuditEvent) {
    let mut line = format!(
        "#{} {} {} {} {} [{}]",
        e.seq,
        time_label(e.at.as_ref()),
        e.kind,
        method_label(e.method),
        e.outcome,
        e.source
    );
    if !e.user_id.is_empty() {
        line.push_str(&format!(" user={}", e.user_id));
    }
    if !e.session_user_id.is_empty() {
        line.push_str(&format!(" session_user={}", e.session_user_id));
    }
    if !e.permission.is_empty() {
        line.push_str(&format!(" permission={}", e.permission));
    }
    if !e.authorizer.is_empty() {
        line.push_str(&format!(" authorizer={:?}", e.authorizer));
    }
    if !e.phc.is_empty() {
        line.push_str(&format!(" phc={}", e.phc));
    }
    if !e.reason.is_empty() {
        line.push_str(&format!(" ({})", e.reason));
    }
    out!("{line}");
}

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

fn print_explanation(e: &pb::Explanation) {
    let terminal = if e.sub_terminal_id.is_empty() {
        format!("Sales Point {}", e.sales_point_id)
    } else {
        format!(
            "Sales Point {} / sub-terminal {}",
            e.sales_point_id, e.sub_terminal_id
        )
    };
    out!("user:              {}", e.user_id);
    out!("terminal:          {terminal}");
    out!("in replica:        {}", yes_no(e.present));
    if e.present {
        if let Some(u) = &e.user {
            out!(
                "name:              {} {} (ordinal {})",
                u.first_name,
                u.last_name,
                e.ordinal
            );
        }
        out!("active:            {}", yes_no(e.active));
        out!(
            "assigned here:     {} (via Sales Point: {}, via sub-terminal: {})",
            yes_no(e.assigned_to_sales_point || e.assigned_to_sub_terminal),
            yes_no(e.assigned_to_sales_point),
            yes_no(e.assigned_to_sub_terminal)
        );
        out!("has PIN:           {}", yes_no(e.has_pin));
        out!("keys:              {}", e.keys);
        out!("roles here:        {}", e.role_ids.join(", "));
        out!("permissions here:  {}", e.permissions.join(", "));
        for c in &e.credentials {
            let name = match pb::LoginMethod::try_from(c.method) {
                Ok(pb::LoginMethod::Pin) => "PIN".to_owned(),
                _ => format!("key {}", c.index),
            };
            let shared = if c.shared_with.is_empty() {
                String::new()
            } else {
                format!(
                    " [shared with {}]",
                    c.shared_with
                        .iter()
                        .map(|u| u.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            out!("{:<19}{}{shared}", format!("{name}:"), c.outcome);
        }
    }
    out!("can log in here:   {}", yes_no(e.can_log_in));
    if !e.problems.is_empty() {
        out!("problems:");
        for p in &e.problems {
            out!("  - {p}");
        }
    }
}

fn print_collisions(report: &pb::CollisionReport) {
    if report.collisions.is_empty() {
        out!("no shared PINs or keys among the users at this terminal");
        return;
    }
    for c in &report.collisions {
        let members: Vec<String> = c
            .members
            .iter()
            .map(|m| {
                let id = m.user.as_ref().map(|u| u.id.as_str()).unwrap_or("?");
                let mut flags = vec![format!("ordinal {}", m.ordinal)];
                if !m.active {
                    flags.push("inactive".into());
                }
                if !m.assigned_here {
                    flags.push("not here".into());
                }
                format!("{id} ({})", flags.join(", "))
            })
            .collect();
        let winner = c
            .winner
            .as_ref()
            .map(|u| format!("{} logs in", u.id))
            .unwrap_or_else(|| "nobody may log in with it".into());
        out!(
            "{} shared by {} -> {winner}",
            if method_label(c.method) == "pin" {
                "PIN"
            } else {
                "key"
            },
            members.join(", ")
        );
    }
}
