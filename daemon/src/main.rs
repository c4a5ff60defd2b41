//! `tillgated`: a thin shim over the library's main.
fn main() -> std::process::ExitCode {
    tillgate_daemon::main()
}
