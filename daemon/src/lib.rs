//! tillgated: cashier login for point-of-sale terminals.
//!
//! Pure cores (`resolve`, `validate`, `credential` parsing, `lockout`, `explain`, `audit`) with
//! thin adapters around them (`store` for SQLite, `grpc` for the two listeners, `systemd` for the
//! service manager, `reload` and `signals` for SIGHUP/SIGTERM).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod audit;
pub mod call_rate;
pub mod cli;
pub mod clock;
pub mod coalesce;
pub mod config;
pub mod credential;
pub mod demo;
pub mod enroll;
pub mod explain;
pub mod grpc;
pub mod hardware;
pub mod hashing;
pub mod history;
pub mod input;
pub mod listener;
pub mod lockout;
pub mod logging;
pub mod login;
pub mod memory;
pub mod model;
pub mod priority;
pub mod reload;
pub mod resolve;
pub mod server;
pub mod session;
pub mod signals;
pub mod snapshot;
pub mod store;
pub mod systemd;
pub mod tokens;
pub mod validate;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::Args;
use crate::config::Config;
use crate::reload::Reloader;
use crate::server::{Control, Core, DaemonError, LoginSocket};
use crate::signals::Signals;
use crate::systemd::Notifier;

/// Entry point of the `tillgated` binary.
pub fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "tillgated failed");
            eprintln!("tillgated: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), DaemonError> {
    memory::return_large_blocks_when_freed();
    let (settings, config_path) = if args.demo {
        let settings = demo::settings(
            &args.demo_dir,
            &args.demo_sync_listen,
            args.config.as_deref(),
        )?;
        (settings, None)
    } else {
        let path = args.config_path();
        (Config::load(&path)?.validate()?, Some(path))
    };
    if args.check_config {
        println!("{}: ok", args.config_path().display());
        return Ok(());
    }
    let log = logging::init(settings.log_format, &settings.live.log_level);
    let login_socket = match systemd::take_activated_socket()? {
        Some(listener) => LoginSocket::Activated(listener),
        None => LoginSocket::Bind,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| DaemonError::Io {
            context: "starting the async runtime".into(),
            source,
        })?;
    runtime.block_on(async move {
        let signals = Signals::install().map_err(|source| DaemonError::Io {
            context: "installing signal handlers".into(),
            source,
        })?;
        let core = Core::open(settings)?;
        let control = Control {
            signals,
            notifier: Notifier::from_env(),
            reloader: Reloader::new(config_path, log),
        };
        if args.demo {
            demo::seed(&core)?;
            server::serve(core, login_socket, control, demo::print_guide).await
        } else {
            server::serve(core, login_socket, control, |_, _| {}).await
        }
    })
}
