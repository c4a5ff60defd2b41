//! tracing setup. Output goes to journald when systemd says stderr is the journal
//! (`JOURNAL_STREAM` names stderr's device and inode), otherwise to stderr as text or JSON
//! (`log.format`). The filter comes from RUST_LOG when set, else from `log.level`, and the
//! latter can be changed at run time (SIGHUP) through [`LogHandle`].

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::config::LogFormat;

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("log.level {level:?} is not a valid tracing filter: {source}")]
    BadLevel {
        level: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("could not change the log filter: {0}")]
    Reload(#[from] reload::Error),
}

/// Where the log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Journald,
    Stderr(LogFormat),
}

/// Changes the running log filter.
#[derive(Debug, Clone)]
pub struct LogHandle {
    filter: reload::Handle<EnvFilter, Registry>,
    /// RUST_LOG was set (and valid) at start: it keeps precedence over `log.level`.
    from_env: bool,
    pub output: Output,
}

/// What applying a new `log.level` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LevelChange {
    Applied,
    /// RUST_LOG is set and wins over the config file.
    OverriddenByEnv,
}

impl LogHandle {
    /// Replaces the filter with `level` (a `log.level` value), unless RUST_LOG set it.
    pub fn set_level(&self, level: &str) -> Result<LevelChange, LoggingError> {
        if self.from_env {
            return Ok(LevelChange::OverriddenByEnv);
        }
        let filter = EnvFilter::try_new(level).map_err(|source| LoggingError::BadLevel {
            level: level.to_owned(),
            source,
        })?;
        self.filter.reload(filter)?;
        Ok(LevelChange::Applied)
    }
}

/// Installs the global subscriber and returns the handle that changes its filter. When a
/// subscriber is installed already (a second init in one process), that one is kept and the
/// handle's changes fail with [`LoggingError::Reload`].
pub fn init(format: LogFormat, level: &str) -> LogHandle {
    let env = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let mut notes = Vec::new();
    let (filter, from_env) = match env.as_deref().map(EnvFilter::try_new) {
        Some(Ok(filter)) => (filter, true),
        Some(Err(e)) => {
            notes.push(format!(
                "RUST_LOG is not a valid filter ({e}); using log.level"
            ));
            (config_filter(level), false)
        }
        None => (config_filter(level), false),
    };
    let (filter, handle) = reload::Layer::new(filter);

    let journal = match std::env::var("JOURNAL_STREAM") {
        Ok(value) if stderr_is(&value) => match tracing_journald::layer() {
            Ok(layer) => Some(layer),
            Err(e) => {
                notes.push(format!(
                    "stderr is the journal but journald cannot be reached ({e}); logging to stderr"
                ));
                None
            }
        },
        _ => None,
    };
    let (output, layer) = match journal {
        Some(layer) => (Output::Journald, layer.boxed()),
        None => {
            let fmt = tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal());
            match format {
                LogFormat::Json => (Output::Stderr(format), fmt.json().boxed()),
                LogFormat::Text => (Output::Stderr(format), fmt.boxed()),
            }
        }
    };
    // A second init (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init();
    for note in notes {
        tracing::warn!("{note}");
    }
    LogHandle {
        filter: handle,
        from_env,
        output,
    }
}

/// `level` was validated with the config; "info" only guards a programming error.
fn config_filter(level: &str) -> EnvFilter {
    EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Does `JOURNAL_STREAM` ("device:inode", set by systemd) describe this process's stderr?
/// A child that inherited the variable but writes elsewhere must not log to the journal.
fn stderr_is(journal_stream: &str) -> bool {
    let Some((dev, ino)) = parse_journal_stream(journal_stream) else {
        return false;
    };
    let meta = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|file| file.metadata());
    matches!(meta, Ok(meta) if meta.dev() == dev && meta.ino() == ino)
}

fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_values() {
        assert_eq!(parse_journal_stream("8:123456"), Some((8, 123456)));
        assert_eq!(parse_journal_stream("8:"), None);
        assert_eq!(parse_journal_stream("x:1"), None);
        assert_eq!(parse_journal_stream("81234"), None);
        // Device 0, inode 0 is nobody's stderr.
        assert!(!stderr_is("0:0"));
        assert!(!stderr_is("garbage"));
    }
}
