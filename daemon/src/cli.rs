//! Command line of `tillgated`.

use std::path::PathBuf;

use clap::Parser;

pub const DEFAULT_CONFIG: &str = "/etc/tillgate/tillgated.toml";

#[derive(Debug, Parser)]
#[command(
    name = "tillgated",
    version,
    about = "Cashier login daemon for point-of-sale terminals"
)]
pub struct Args {
    /// Configuration file (TOML) [default: /etc/tillgate/tillgated.toml]. With --demo only its
    /// [input] section is used, so the demo can be tried with a PIN pad or key reader.
    #[arg(long, env = "TILLGATE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Run on a built-in demo account in ./tillgate-demo (no config file needed).
    #[arg(long, conflicts_with = "check_config")]
    pub demo: bool,

    /// Directory for the demo's state and socket.
    #[arg(long, default_value = "tillgate-demo", requires = "demo")]
    pub demo_dir: PathBuf,

    /// Sync listener address for the demo (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:7870", requires = "demo")]
    pub demo_sync_listen: String,

    /// Validate the configuration and exit.
    #[arg(long)]
    pub check_config: bool,
}

impl Args {
    /// The configuration file: --config, TILLGATE_CONFIG, or the default path.
    pub fn config_path(&self) -> PathBuf {
        self.config
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
    }
}
