//! SIGHUP: re-read the sync tokens from the local store and the configuration file, and apply the
//! live part of the configuration ([`LiveSettings`]) without a restart. A config file that does
//! not parse or validate is refused as a whole and the running configuration is kept. The
//! current session is never touched.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::{Config, ConfigError, LiveSettings};
use crate::logging::{LevelChange, LogHandle};
use crate::server::Core;
use crate::store::StoreError;
use crate::tokens::TokenRegistry;

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Tokens(#[from] StoreError),
    #[error("worker task failed: {0}")]
    TokenTask(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Logging(#[from] crate::logging::LoggingError),
}

/// What a reload did.
#[derive(Debug, Default)]
pub struct ReloadReport {
    pub tokens: usize,
    /// Live keys whose new values are in force now.
    pub applied: Vec<&'static str>,
    /// Changed keys that take effect at the next restart.
    pub restart_needed: Vec<&'static str>,
    /// Parts that failed; whatever they covered keeps its old value.
    pub errors: Vec<ReloadError>,
}

/// Owns what a reload changes: the config file's path, the log filter, and the live settings.
#[derive(Debug)]
pub struct Reloader {
    /// `None` in demo mode, which has no config file.
    config_path: Option<PathBuf>,
    log: LogHandle,
}

impl Reloader {
    pub fn new(config_path: Option<PathBuf>, log: LogHandle) -> Reloader {
        Reloader { config_path, log }
    }

    /// Reloads tokens and configuration, logging each outcome.
    pub async fn reload(&self, core: &Core) -> ReloadReport {
        tracing::info!("reloading (SIGHUP)");
        let mut report = ReloadReport::default();
        match reload_tokens(core.tokens.clone(), core.local.clone()).await {
            Ok(count) => report.tokens = count,
            Err(e) => {
                tracing::error!(error = %e, "sync tokens not reloaded; keeping the loaded ones");
                report.errors.push(e);
            }
        }
        if let Some(path) = &self.config_path {
            let outcome = Config::load(path)
                .and_then(Config::validate)
                .map_err(ReloadError::from)
                .and_then(|new| {
                    report.restart_needed = core.settings.restart_only_changes(&new);
                    self.apply(&core.live, new.live, &mut report.applied)?;
                    apply_input(&core.input, new.input, &mut report.applied);
                    Ok(())
                });
            if let Err(e) = outcome {
                tracing::error!(error = %e, "config reload refused; keeping the running configuration");
                report.errors.push(e);
            }
        }
        if !report.restart_needed.is_empty() {
            tracing::warn!(
                keys = %report.restart_needed.join(", "),
                "changed config keys take effect at the next restart; the running values are kept"
            );
        }
        let applied = if report.applied.is_empty() {
            "nothing changed".to_owned()
        } else {
            report.applied.join(", ")
        };
        tracing::info!(
            tokens = report.tokens,
            live_config = %applied,
            failed = report.errors.len(),
            "reload done"
        );
        report
    }

    /// Applies a validated live configuration; all or nothing.
    fn apply(
        &self,
        live: &watch::Sender<LiveSettings>,
        new: LiveSettings,
        applied: &mut Vec<&'static str>,
    ) -> Result<(), ReloadError> {
        let current = live.borrow().clone();
        if new.log_level != current.log_level {
            match self.log.set_level(&new.log_level)? {
                LevelChange::Applied => {
                    tracing::info!(level = %new.log_level, "log level changed");
                    applied.push("log.level");
                }
                LevelChange::OverriddenByEnv => {
                    tracing::info!("log.level changed, but RUST_LOG is set and stays in force");
                }
            }
        }
        live.send_if_modified(|value| {
            let changed = *value != new;
            *value = new;
            changed
        });
        Ok(())
    }
}

/// Publishes new input rules if the `[input]` section changed; the readers restart under them.
fn apply_input(
    input: &watch::Sender<Arc<crate::hardware::InputSettings>>,
    new: crate::hardware::InputSettings,
    applied: &mut Vec<&'static str>,
) {
    if input.borrow().source != new.source {
        input.send_replace(Arc::new(new));
        tracing::info!("input rules changed");
        applied.push("input");
    }
}

async fn reload_tokens(
    tokens: Arc<TokenRegistry>,
    local: Arc<crate::store::LocalStore>,
) -> Result<usize, ReloadError> {
    let count = tokio::task::spawn_blocking(move || {
        tokens.reload(&local)?;
        Ok::<_, StoreError>(tokens.list().len())
    })
    .await??;
    tracing::info!(tokens = count, "sync tokens reloaded from the local store");
    Ok(count)
}
