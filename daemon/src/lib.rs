//! tillgated: cashier login for point-of-sale terminals.
//!
//! Pure cores (`resolve`, `validate`, `credential` parsing, `lockout`, `explain`, `audit`) with thin adapters around them
//! (`store` for SQLite, `grpc` for the two listeners).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod audit;
pub mod cli;
pub mod config;
pub mod credential;
pub mod demo;
pub mod explain;
pub mod grpc;
pub mod hardware;
pub mod input;
pub mod lockout;
pub mod logging;
pub mod login;
pub mod model;
pub mod resolve;
pub mod server;
pub mod session;
pub mod store;
pub mod tokens;
pub mod validate;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::Args;
use crate::config::Config;
use crate::server::{Core, DaemonError};

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
    let settings = if args.demo {
        demo::settings(&args.demo_dir, &args.demo_sync_listen)?
    } else {
        Config::load(&args.config)?.validate()?
    };
    if args.check_config {
        println!("{}: ok", args.config.display());
        return Ok(());
    }
    logging::init(&settings.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| DaemonError::Io {
            context: "starting the async runtime".into(),
            source,
        })?;
    runtime.block_on(async move {
        let core = Core::open(settings)?;
        if args.demo {
            demo::seed(&core)?;
            server::serve(core, demo::print_guide).await
        } else {
            server::serve(core, |_, _| {}).await
        }
    })
}
