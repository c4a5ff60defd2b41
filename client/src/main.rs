//! `tillctl`: a thin shim over the library's CLI.
fn main() -> std::process::ExitCode {
    tillgate_client::cli::main()
}
