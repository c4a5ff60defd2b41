//! The `tillgated` binary's command line: config errors name the key and exit non-zero.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn check(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tillgated.toml");
    std::fs::write(&path, config).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tillgated"))
        .arg("--check-config")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn valid_config_passes_the_check() {
    let (ok, stderr) = check("[terminal]\nsales_point_id = \"sp-1\"\n");
    assert!(ok, "{stderr}");
}

#[test]
fn invalid_configs_name_the_key() {
    let (ok, stderr) = check("[terminal]\nsales_point_id = \"sp-1\"\n[sync]\nlisten = \"here\"\n");
    assert!(!ok);
    assert!(stderr.contains("config key sync.listen"), "{stderr}");
    let (ok, stderr) =
        check("[terminal]\nsales_point_id = \"sp-1\"\n[hashing]\nmax_concurrent = 0\n");
    assert!(!ok);
    assert!(
        stderr.contains("config key hashing.max_concurrent: 0 is outside 1..=64"),
        "{stderr}"
    );
    let (ok, stderr) = check("[terminal]\nsales_point = \"sp-1\"\n");
    assert!(!ok);
    assert!(stderr.contains("unknown field `sales_point`"), "{stderr}");
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_tillgated"))
        .args(["--config", "/nonexistent/tillgated.toml"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("config file /nonexistent/tillgated.toml"),
        "{stderr}"
    );
}

/// The example is also the Debian package's /etc/tillgate/tillgated.toml: as shipped it names no
/// Sales Point, so the daemon (and the package's postinst, which runs --check-config) refuses to
/// start it, naming the key; with the one key set it is valid.
#[test]
fn shipped_example_config_is_valid_once_it_names_the_sales_point() {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../systemd/tillgated.toml"
    ))
    .unwrap();
    let (ok, stderr) = check(&example);
    assert!(!ok, "the unedited example should be refused");
    assert!(
        stderr.contains("config key terminal.sales_point_id: must not be empty"),
        "{stderr}"
    );
    let unset = "sales_point_id = \"\"";
    assert_eq!(example.matches(unset).count(), 1, "{example}");
    let (ok, stderr) = check(&example.replace(unset, "sales_point_id = \"main-street\""));
    assert!(ok, "{stderr}");
}
