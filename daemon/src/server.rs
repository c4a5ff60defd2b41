//! Wires the replica, the services and the two listeners together, and runs the main loop
//! (signals, systemd notifications, watchdog) until SIGTERM/SIGINT.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tillgate_proto::v1::admin_server::AdminServer;
use tillgate_proto::v1::devices_server::DevicesServer;
use tillgate_proto::v1::login_server::LoginServer;
use tillgate_proto::v1::sync_server::SyncServer;
use tokio::net::UnixListener;
use tokio::sync::{Notify, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::util::MapResponseLayer;

use crate::config::{ListenerLimits, LiveSettings, Settings};
use crate::credential::{KeyFileError, TerminalKey};
use crate::grpc::access::{AccessLayer, AccessPolicy};
use crate::grpc::admin::AdminService;
use crate::grpc::auth::BearerCheck;
use crate::grpc::call_rate::{CallRateLayer, UidRates};
use crate::grpc::devices::DevicesService;
use crate::grpc::limits::over_limit_is_resource_exhausted;
use crate::grpc::login::{ListenerInfo, LoginService};
use crate::grpc::sync::SyncService;
use crate::hardware::{DeviceRegistry, Dispatcher};
use crate::listener::{AuthDeadlines, Caps, ConnectionCap};
use crate::login::Authenticator;
use crate::reload::Reloader;
use crate::session::SessionManager;
use crate::signals::{Signal, Signals};
use crate::store::{LocalStore, OpenOutcome, Replica, StoreError};
use crate::systemd::{Notifier, SystemdError};
use crate::tokens::TokenRegistry;

/// How long in-flight calls may take to finish after SIGTERM.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Systemd(#[from] SystemdError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("login_socket.group: no group named {0:?}")]
    UnknownGroup(String),
    #[error("{context}: {source}")]
    Transport {
        context: &'static str,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("demo: {0}")]
    Demo(String),
    #[error("{0}")]
    Runtime(String),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let context = context.into();
    move |source| DaemonError::Io { context, source }
}

/// Everything the services share.
#[derive(Debug)]
pub struct Core {
    /// The settings read at start. The live part's current value is in `live`.
    pub settings: Settings,
    /// The reloadable settings in force; SIGHUP replaces them. Subscribe to follow changes.
    pub live: watch::Sender<LiveSettings>,
    /// The input settings in force; a reload publishes new ones and the readers follow.
    pub input: watch::Sender<Arc<crate::hardware::InputSettings>>,
    /// Signalled after each sync that changed the replica.
    pub replica_changed: Arc<Notify>,
    pub replica: Arc<Replica>,
    /// The terminal's own state (tokens, audit outbox, lockouts, identity).
    pub local: Arc<LocalStore>,
    pub key: Arc<TerminalKey>,
    pub sessions: Arc<SessionManager>,
    pub auth: Arc<Authenticator>,
    pub tokens: Arc<TokenRegistry>,
    /// Input devices as the hardware module sees them (`tillctl devices`, `GetSyncState`).
    pub devices: Arc<DeviceRegistry>,
    /// Enrolment key captures waiting on readers (EnrollKey ↔ the input dispatcher).
    pub captures: Arc<crate::hardware::capture::KeyCaptures>,
}

impl Core {
    /// Creates the state directory and key, and opens (or quarantines and recreates) the two
    /// stores: the local store first, as it copies the terminal's state out of a single-file
    /// replica before the replica's migration drops it.
    pub fn open(settings: Settings) -> Result<Core, DaemonError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&settings.state_dir)
            .map_err(io(format!(
                "state directory {}",
                settings.state_dir.display()
            )))?;
        let (key, created) = TerminalKey::load_or_create(&settings.terminal_key_path())?;
        if created {
            tracing::info!(path = %settings.terminal_key_path().display(), "terminal key created");
        }
        let (local, outcome) =
            LocalStore::open(&settings.local_store_path(), &settings.database_path())?;
        if let OpenOutcome::Quarantined { moved_to, .. } = &outcome {
            tracing::error!(moved_to = %moved_to.display(),
                "the local store was unusable and was moved aside: sync tokens, lockout counters and audit rows \
                 central had not pulled are in the moved file; a new audit stream starts; create a new sync token for central");
        }
        let identity = local.identity();
        tracing::info!(path = %local.path().display(), audit_stream = %identity.stream_id, "local store open");
        let (replica, outcome) = Replica::open_beside(
            &settings.database_path(),
            &key.fingerprint(),
            local.copied_single_file_state(),
        )?;
        if let OpenOutcome::Quarantined { moved_to, .. } = &outcome {
            tracing::warn!(moved_to = %moved_to.display(), "starting with an empty replica: logins are refused until central sends a snapshot (sync tokens, lockouts and audit are kept)");
        }
        // A snapshot side file left by a crash is garbage: the replica beside it is whole.
        crate::store::discard_incoming(replica.path())
            .map_err(io("unfinished snapshot file".to_owned()))?;
        let state = replica.state()?;
        tracing::info!(path = %replica.path().display(), cursor = %state.cursor, "replica open");
        // Not fatal: on a full disk the daemon still starts, and the counters are rebased by
        // their next write.
        match local.rebase_lockouts(crate::clock::now()) {
            Ok(0) => {}
            Ok(rebased) => tracing::info!(
                counters = rebased,
                "lockout counters from an earlier boot carried over"
            ),
            Err(e) => {
                tracing::error!(error = %e, "could not carry lockout counters over to this boot")
            }
        }
        // Hashed failures a crash left coalesced but not yet summed up in a row.
        match local.flush_summaries(&[]) {
            Ok((0, _)) => {}
            Ok((rows, _)) => tracing::info!(
                rows,
                "audit summary rows written for failures coalesced before the last stop"
            ),
            Err(e) => tracing::error!(error = %e, "could not write the pending audit summary rows"),
        }
        let stats = local.audit_stats()?;
        if stats.backlog > settings.policy.audit_max_rows {
            tracing::error!(
                backlog = stats.backlog,
                max_rows = settings.policy.audit_max_rows,
                "audit outbox over its cap at start: central has not acknowledged audit rows; they are kept"
            );
        }
        let replica = Arc::new(replica);
        let local = Arc::new(local);
        let key = Arc::new(key);
        let sessions = Arc::new(SessionManager::new(settings.session));
        let auth = Arc::new(Authenticator::new(
            replica.clone(),
            local.clone(),
            key.clone(),
            settings.terminal.clone(),
            sessions.clone(),
            crate::hashing::HashingQueue::new(
                settings.max_concurrent_hashes,
                settings.max_waiting_per_source,
            ),
            settings.policy,
        ));
        let tokens = Arc::new(TokenRegistry::load(&local)?);
        Ok(Core {
            live: watch::Sender::new(settings.live.clone()),
            input: watch::Sender::new(Arc::new(settings.input.clone())),
            replica_changed: Arc::new(Notify::new()),
            settings,
            replica,
            local,
            key,
            sessions,
            auth,
            tokens,
            devices: Arc::new(DeviceRegistry::default()),
            captures: Arc::default(),
        })
    }
}

/// Where the login socket comes from.
#[derive(Debug)]
pub enum LoginSocket {
    /// Bind `login_socket.path` (removing a stale socket file), set its group and mode, and
    /// remove it at shutdown.
    Bind,
    /// A listening socket passed by systemd (`tillgated.socket`), which owns the file: it is
    /// neither re-bound, nor chmod-ed, nor removed.
    Activated(std::os::unix::net::UnixListener),
}

/// What drives the main loop besides the listeners.
#[derive(Debug)]
pub struct Control {
    pub signals: Signals,
    pub notifier: Notifier,
    pub reloader: Reloader,
}

/// Serves both listeners until a shutdown signal, then checkpoints the WAL.
/// `on_ready` runs once both listeners are bound, with the sync listener's actual address;
/// READY=1 goes to systemd right after.
pub async fn serve(
    core: Core,
    login_socket: LoginSocket,
    mut control: Control,
    on_ready: impl FnOnce(&Settings, std::net::SocketAddr),
) -> Result<(), DaemonError> {
    let settings = &core.settings;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&settings.runtime_dir)
        .map_err(io(format!(
            "runtime directory {}",
            settings.runtime_dir.display()
        )))?;

    let tcp = std::net::TcpListener::bind(settings.sync_listen)
        .map_err(io(format!("sync listener {}", settings.sync_listen)))?;
    tcp.set_nonblocking(true).map_err(io("sync listener"))?;
    let sync_addr = tcp.local_addr().map_err(io("sync listener"))?;
    let tcp = tokio::net::TcpListener::from_std(tcp).map_err(io("sync listener"))?;
    write_atomically(&settings.sync_addr_path(), &sync_addr.to_string())?;

    let (unix, socket_path, owns_socket) = match login_socket {
        LoginSocket::Bind => (
            bind_login_socket(settings)?,
            settings.socket_path.clone(),
            true,
        ),
        LoginSocket::Activated(listener) => {
            let (listener, path) = adopt_login_socket(listener, settings)?;
            (listener, path, false)
        }
    };
    tracing::info!(socket = %socket_path.display(), activated = !owns_socket, sync = %sync_addr, tls = settings.tls.is_some(), "listening");
    if bearer_tokens_in_the_clear(sync_addr, settings.tls.is_some()) {
        tracing::warn!(
            sync = %sync_addr,
            "the sync listener is reachable from the network without TLS: central's bearer \
             tokens and the replica travel in the clear; set [sync.tls], or reach this till \
             over a VPN (README.md, \"Install\")"
        );
    }
    on_ready(settings, sync_addr);

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let login = login_server(
        &core,
        &socket_path,
        sync_addr.to_string(),
        unix,
        shutdown_rx.clone(),
    );
    let sync = sync_server(&core, tcp, shutdown_rx)?;
    let mut login = tokio::spawn(login);
    let mut sync = tokio::spawn(sync);
    let idle_lock = tokio::spawn(core.sessions.clone().run_idle_lock());
    let summary_flush = tokio::spawn(
        core.auth
            .clone()
            .run_summary_flush(settings.policy.audit_summary_interval),
    );
    let input = crate::hardware::supervise(
        core.input.subscribe(),
        Arc::new(Dispatcher {
            auth: core.auth.clone(),
            registry: core.devices.clone(),
            captures: core.captures.clone(),
        }),
    );
    control.notifier.ready(&core).await;

    let mut watchdog = control.notifier.watchdog_interval().map(|period| {
        tracing::info!(?period, "systemd watchdog enabled");
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    let early = main_loop(&core, &mut control, &mut watchdog, &mut login, &mut sync).await;
    control.notifier.stopping();
    let _ = shutdown_tx.send(true);
    idle_lock.abort();
    summary_flush.abort();
    let mut outcome = Ok(());
    if let Some((which, result)) = early {
        tracing::error!(
            listener = which,
            "listener stopped unexpectedly; shutting down"
        );
        outcome = flatten(result);
    } else {
        tracing::info!("shutting down: finishing in-flight calls");
    }
    // In-flight calls get a grace period; a client that keeps its connection open longer
    // must not hold the daemon (and its restart) hostage. The watchdog keeps being fed
    // meanwhile: the grace period may outlast WatchdogSec/2.
    for mut handle in [login, sync] {
        if handle.is_finished() && outcome.is_err() {
            continue;
        }
        let finished = async {
            loop {
                tokio::select! {
                    result = &mut handle => break result,
                    _ = tick(&mut watchdog) => control.notifier.watchdog(),
                }
            }
        };
        match tokio::time::timeout(SHUTDOWN_GRACE, finished).await {
            Ok(result) => {
                if let Err(e) = flatten(result) {
                    tracing::warn!(error = %e, "listener ended with an error during shutdown");
                }
            }
            Err(_) => {
                tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open after the grace period; closing them");
                handle.abort();
            }
        }
    }
    input.abort();
    if let Err(e) = core.auth.flush_summaries().await {
        tracing::warn!(error = %e, "writing the audit summary rows at shutdown failed");
    }
    for (store, checkpoint) in [
        ("replica", core.replica.close_cleanly()),
        ("local", core.local.close_cleanly()),
    ] {
        if let Err(e) = checkpoint {
            tracing::warn!(store, error = %e, "closing the store cleanly at shutdown failed; the next start checks it");
        }
    }
    // An activated socket belongs to systemd, which keeps it open across restarts.
    if owns_socket {
        let _ = std::fs::remove_file(&socket_path);
    }
    let _ = std::fs::remove_file(settings.sync_addr_path());
    tracing::info!("stopped");
    outcome
}

type ListenerTask = tokio::task::JoinHandle<Result<(), DaemonError>>;
type ListenerEnd = (
    &'static str,
    Result<Result<(), DaemonError>, tokio::task::JoinError>,
);

/// Runs until SIGTERM/SIGINT (`None`) or until a listener stops on its own. It pings the
/// watchdog itself, so a main loop that hangs gets the daemon restarted.
async fn main_loop(
    core: &Core,
    control: &mut Control,
    watchdog: &mut Option<tokio::time::Interval>,
    login: &mut ListenerTask,
    sync: &mut ListenerTask,
) -> Option<ListenerEnd> {
    loop {
        tokio::select! {
            signal = control.signals.next() => match signal {
                Signal::Stop(name) => {
                    tracing::info!("{name} received");
                    return None;
                }
                Signal::Reload => {
                    control.notifier.reloading();
                    control.reloader.reload(core).await;
                    control.notifier.ready(core).await;
                }
            },
            _ = tick(watchdog) => control.notifier.watchdog(),
            _ = core.replica_changed.notified() => control.notifier.status(core).await,
            result = &mut *login => return Some(("login", result)),
            result = &mut *sync => return Some(("sync", result)),
        }
    }
}

/// The next watchdog tick, or never when the watchdog is off.
async fn tick(watchdog: &mut Option<tokio::time::Interval>) {
    match watchdog {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn flatten(
    result: Result<Result<(), DaemonError>, tokio::task::JoinError>,
) -> Result<(), DaemonError> {
    result.map_err(|e| DaemonError::Runtime(format!("listener task failed: {e}")))?
}

async fn wait_for(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// A sync listener off loopback without TLS: tokens (and the pushed replica) cross the LAN as
/// plain text.
fn bearer_tokens_in_the_clear(addr: std::net::SocketAddr, tls: bool) -> bool {
    !tls && !addr.ip().is_loopback()
}

const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
const LOGIN_SOCKET_SERVICES: &[&str] = &[
    <LoginServer<LoginService> as tonic::server::NamedService>::NAME,
    <AdminServer<AdminService> as tonic::server::NamedService>::NAME,
    <DevicesServer<DevicesService> as tonic::server::NamedService>::NAME,
];
const SYNC_SERVICES: &[&str] = &[<SyncServer<SyncService> as tonic::server::NamedService>::NAME];

/// Reflection for one listener: it advertises `services` (and health and itself) only, so a
/// client of the sync port does not see the login socket's services, nor the other way round.
fn reflection(
    services: &'static [&'static str],
) -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    DaemonError,
> {
    let builder = |reflection_service: &str| {
        services
            .iter()
            .chain(&[HEALTH_SERVICE, reflection_service])
            .fold(
                tonic_reflection::server::Builder::configure()
                    .register_encoded_file_descriptor_set(tillgate_proto::v1::FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
                |builder, name| builder.with_service_name(*name),
            )
    };
    let v1 = builder("grpc.reflection.v1.ServerReflection")
        .build_v1()
        .map_err(|e| DaemonError::Runtime(format!("reflection: {e}")))?;
    let v1alpha = builder("grpc.reflection.v1alpha.ServerReflection")
        .build_v1alpha()
        .map_err(|e| DaemonError::Runtime(format!("reflection: {e}")))?;
    Ok((v1, v1alpha))
}

fn login_server(
    core: &Core,
    socket_path: &Path,
    sync_listen: String,
    listener: UnixListener,
    shutdown: watch::Receiver<bool>,
) -> impl std::future::Future<Output = Result<(), DaemonError>> + use<> {
    let settings = &core.settings;
    let max = settings.login_max_message_bytes;
    let limits = settings.login_limits;
    let enrolment = Arc::new(crate::enroll::Enrolment {
        auth: core.auth.clone(),
        replica: core.replica.clone(),
        terminal: settings.terminal.clone(),
        captures: core.captures.clone(),
        devices: core.devices.clone(),
        settings: settings.enrolment.clone(),
    });
    let login = LoginService {
        auth: core.auth.clone(),
        enrolment,
        replica: core.replica.clone(),
        terminal: settings.terminal.clone(),
        listeners: ListenerInfo {
            login_socket: socket_path.display().to_string(),
            sync_listen,
            sync_tls: settings.tls.is_some(),
        },
        shutdown: shutdown.clone(),
    };
    let mut admin_uids = settings.admin_uids.clone();
    admin_uids.push(nix::unistd::geteuid().as_raw());
    let access = AccessLayer(Arc::new(AccessPolicy { admin_uids }));
    let admin = AdminService {
        replica: core.replica.clone(),
        local: core.local.clone(),
        tokens: core.tokens.clone(),
        auth: core.auth.clone(),
        terminal: settings.terminal.clone(),
    };
    let devices = DevicesService {
        registry: core.devices.clone(),
        shutdown: shutdown.clone(),
    };
    let policy = PeerPolicy {
        allow_uids: settings.allow_uids.clone(),
        allow_gids: settings.allow_gids.clone(),
    };
    let reflection = reflection(LOGIN_SOCKET_SERVICES);
    let rates = CallRateLayer(UidRates::new(settings.login_call_rate));
    let keepalive = settings.login_keepalive;
    async move {
        let (v1, v1alpha) = reflection?;
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<LoginServer<LoginService>>().await;
        health.set_serving::<AdminServer<AdminService>>().await;
        health.set_serving::<DevicesServer<DevicesService>>().await;
        // Its peers are local uids the socket's mode and allow lists admitted: nothing is
        // evicted here, a full socket closes the new connection.
        let cap = ConnectionCap::new(
            "login socket",
            "login_socket.max_connections_per_uid",
            Caps {
                max_connections: limits.max_connections,
                max_connections_per_peer: limits.max_connections_per_peer,
                evict_unauthenticated: false,
            },
        );
        let incoming =
            UnixListenerStream::new(listener).filter_map(move |accepted| match accepted {
                Ok(stream) => policy
                    .admit(stream)
                    .and_then(|(stream, uid)| cap.admit(stream, uid))
                    .map(Ok::<_, std::io::Error>),
                Err(e) => {
                    tracing::warn!(error = %e, "login socket accept failed");
                    None
                }
            });
        // A dead POS peer's connection (and its Watch streams) is found out by an unanswered ping.
        // The call rate comes before the calls-in-progress cap: calls waiting for their uid's
        // turn hold no slot, so another uid's calls go past them.
        bounded(Server::builder(), limits)
            .http2_keepalive_interval(keepalive)
            .http2_keepalive_timeout(keepalive)
            .layer(MapResponseLayer::new(over_limit_is_resource_exhausted))
            .layer(rates)
            .layer(GlobalConcurrencyLimitLayer::new(limits.max_calls))
            .layer(access)
            .add_service(health_service)
            .add_service(v1)
            .add_service(v1alpha)
            .add_service(
                LoginServer::new(login)
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(tillgate_client::MAX_RESPONSE_BYTES),
            )
            .add_service(
                DevicesServer::new(devices)
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(tillgate_client::MAX_RESPONSE_BYTES),
            )
            .add_service(
                AdminServer::new(admin)
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(tillgate_client::MAX_RESPONSE_BYTES),
            )
            .serve_with_incoming_shutdown(incoming, wait_for(shutdown))
            .await
            .map_err(|source| DaemonError::Transport {
                context: "login socket",
                source,
            })
    }
}

fn sync_server(
    core: &Core,
    listener: tokio::net::TcpListener,
    shutdown: watch::Receiver<bool>,
) -> Result<impl std::future::Future<Output = Result<(), DaemonError>> + use<>, DaemonError> {
    let settings = &core.settings;
    let max = settings.sync_max_message_bytes;
    let limits = settings.sync_limits;
    let sync = SyncService {
        replica: core.replica.clone(),
        local: core.local.clone(),
        key: core.key.clone(),
        limits: settings.cost_limits,
        max_schemes: settings.max_schemes,
        terminal: settings.terminal.clone(),
        auth: core.auth.clone(),
        devices: core.devices.clone(),
        applied: core.replica_changed.clone(),
        snapshots: Arc::new(tokio::sync::Semaphore::new(1)),
    };
    let check = BearerCheck {
        tokens: core.tokens.clone(),
    };
    // A central that vanished without closing its connection is found out by an unanswered
    // ping: its calls end, and a snapshot it was streaming frees the slot (grpc/sync.rs).
    let mut builder = bounded(Server::builder(), limits)
        .http2_keepalive_interval(settings.sync_keepalive)
        .http2_keepalive_timeout(settings.sync_keepalive);
    if let Some(tls) = &settings.tls {
        let read =
            |path: &Path| std::fs::read(path).map_err(io(format!("TLS file {}", path.display())));
        let mut config =
            ServerTlsConfig::new().identity(Identity::from_pem(read(&tls.cert)?, read(&tls.key)?));
        if let Some(ca) = &tls.client_ca {
            config = config.client_ca_root(Certificate::from_pem(read(ca)?));
        }
        builder = builder
            .tls_config(config)
            .map_err(|source| DaemonError::Transport {
                context: "sync TLS configuration",
                source,
            })?;
    }
    let reflection = reflection(SYNC_SERVICES);
    let auth_timeout = settings.sync_auth_timeout;
    Ok(async move {
        let (v1, v1alpha) = reflection?;
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<SyncServer<SyncService>>().await;
        let service = SyncServer::new(sync)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        // A full listener makes room by closing a connection that has not authenticated:
        // idle connections cannot lock central out (listener.rs, eviction_choice).
        let cap = ConnectionCap::new(
            "sync listener",
            "sync.max_connections_per_peer",
            Caps {
                max_connections: limits.max_connections,
                max_connections_per_peer: limits.max_connections_per_peer,
                evict_unauthenticated: true,
            },
        );
        // Closed unless a call with a valid token comes within auth_timeout (the bearer check
        // marks the connection): below TLS, so a stalled handshake is covered too.
        let deadlines = AuthDeadlines::new(auth_timeout);
        let incoming =
            TcpListenerStream::new(listener).filter_map(move |accepted| match accepted {
                Ok(stream) => {
                    let ip = match stream.peer_addr() {
                        Ok(addr) => addr.ip(),
                        Err(e) => {
                            tracing::debug!(error = %e, "sync peer gone before it was admitted");
                            return None;
                        }
                    };
                    cap.admit(stream, ip).map(|stream| {
                        let authenticated = stream.authenticated();
                        Ok(deadlines.start(stream, authenticated))
                    })
                }
                Err(e) => Some(Err(e)),
            });
        builder
            .layer(MapResponseLayer::new(over_limit_is_resource_exhausted))
            .layer(GlobalConcurrencyLimitLayer::new(limits.max_calls))
            .add_service(health_service)
            .add_service(v1)
            .add_service(v1alpha)
            .add_service(tonic::service::interceptor::InterceptedService::new(
                service, check,
            ))
            .serve_with_incoming_shutdown(incoming, wait_for(shutdown))
            .await
            .map_err(|source| DaemonError::Transport {
                context: "sync listener",
                source,
            })
    })
}

/// The per-call time limit and the HTTP/2 stream cap of a listener. (The connection caps are
/// [`ConnectionCap`] on the accepted streams, the calls-in-progress cap a global concurrency
/// limit layer.)
fn bounded(builder: Server, limits: ListenerLimits) -> Server {
    let streams = u32::try_from(limits.max_calls).unwrap_or(u32::MAX);
    builder
        .timeout(limits.call_timeout)
        .max_concurrent_streams(streams)
}

/// Which Unix socket peers may connect, by uid or primary gid. Empty lists admit every peer
/// that the socket's file mode lets in.
#[derive(Debug, Clone)]
struct PeerPolicy {
    allow_uids: Vec<u32>,
    allow_gids: Vec<u32>,
}

impl PeerPolicy {
    /// The stream and its peer's uid, if the peer is allowed in.
    fn admit(&self, stream: tokio::net::UnixStream) -> Option<(tokio::net::UnixStream, u32)> {
        let cred = match stream.peer_cred() {
            Ok(cred) => cred,
            Err(e) => {
                tracing::warn!(error = %e, "login socket peer without credentials refused");
                return None;
            }
        };
        let open = self.allow_uids.is_empty() && self.allow_gids.is_empty();
        let allowed =
            open || self.allow_uids.contains(&cred.uid()) || self.allow_gids.contains(&cred.gid());
        let pid = cred.pid().unwrap_or_default();
        if allowed {
            tracing::debug!(
                uid = cred.uid(),
                gid = cred.gid(),
                pid,
                "login socket peer connected"
            );
            Some((stream, cred.uid()))
        } else {
            tracing::warn!(
                uid = cred.uid(),
                gid = cred.gid(),
                pid,
                "login socket peer refused: not in allow_uids / allow_gids"
            );
            None
        }
    }
}

fn bind_login_socket(settings: &Settings) -> Result<UnixListener, DaemonError> {
    let path = &settings.socket_path;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(io(format!("socket directory {}", parent.display())))?;
    }
    // A socket file left by a killed daemon would make bind fail with EADDRINUSE.
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_socket() {
            std::fs::remove_file(path).map_err(io(format!("stale socket {}", path.display())))?;
        }
    }
    // Bound, owned and given its mode under a temporary name, then renamed into place: a client
    // never finds the path before the socket listens (connect would be refused) or while it
    // still has the umask's mode instead of login_socket.mode.
    let final_path = path;
    let path = &PathBuf::from(format!("{}.binding", final_path.display()));
    if std::fs::symlink_metadata(path).is_ok() {
        std::fs::remove_file(path).map_err(io(format!("stale socket {}", path.display())))?;
    }
    let listener =
        UnixListener::bind(path).map_err(io(format!("login socket {}", path.display())))?;
    if let Some(group) = &settings.socket_group {
        let gid = nix::unistd::Group::from_name(group)
            .map_err(|e| DaemonError::Io {
                context: format!("looking up group {group}"),
                source: std::io::Error::from(e),
            })?
            .ok_or_else(|| DaemonError::UnknownGroup(group.clone()))?
            .gid;
        nix::unistd::chown(path, None, Some(gid)).map_err(|e| DaemonError::Io {
            context: format!("chown {} to group {group}", path.display()),
            source: std::io::Error::from(e),
        })?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(settings.socket_mode))
        .map_err(io(format!("chmod {}", path.display())))?;
    std::fs::rename(path, final_path).map_err(io(format!(
        "renaming the login socket to {}",
        final_path.display()
    )))?;
    Ok(listener)
}

/// Takes over a socket passed by systemd. Its file, group and mode are the socket unit's
/// business; a path other than `login_socket.path` is used as is, with a warning.
fn adopt_login_socket(
    listener: std::os::unix::net::UnixListener,
    settings: &Settings,
) -> Result<(UnixListener, PathBuf), DaemonError> {
    listener
        .set_nonblocking(true)
        .map_err(io("activated login socket"))?;
    let addr = listener
        .local_addr()
        .map_err(io("activated login socket"))?;
    let path = match addr.as_pathname() {
        Some(path) => path.to_owned(),
        None => PathBuf::from("(unnamed socket from systemd)"),
    };
    if path != settings.socket_path {
        tracing::warn!(
            activated = %path.display(),
            configured = %settings.socket_path.display(),
            "the socket from systemd is not login_socket.path; serving it anyway (align ListenStream= and the config)"
        );
    }
    let listener = UnixListener::from_std(listener).map_err(io("activated login socket"))?;
    Ok((listener, path))
}

/// Writes via a temporary file and rename, so readers never see a partial file.
fn write_atomically(path: &Path, contents: &str) -> Result<(), DaemonError> {
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let mut file = std::fs::File::create(&tmp).map_err(io(format!("writing {}", tmp.display())))?;
    file.write_all(contents.as_bytes())
        .map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("renaming to {}", path.display())))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn only_a_network_facing_sync_listener_without_tls_is_in_the_clear() {
        let addr = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
        assert!(!bearer_tokens_in_the_clear(addr("127.0.0.1:7870"), false));
        assert!(!bearer_tokens_in_the_clear(addr("[::1]:7870"), false));
        assert!(bearer_tokens_in_the_clear(addr("0.0.0.0:7870"), false));
        assert!(bearer_tokens_in_the_clear(addr("192.168.1.20:7870"), false));
        assert!(bearer_tokens_in_the_clear(addr("[::]:7870"), false));
        assert!(!bearer_tokens_in_the_clear(addr("0.0.0.0:7870"), true));
    }
}
