//! The Debian package, installed and run under systemd as PID 1 on a real kernel. Boots the
//! Debian kernel of `tests/vm/fetch-kernel.sh` in qemu (TCG) on a Debian userland built by
//! `tests/vm/build-root.sh` (mmdebstrap from the host's apt sources, cached), as one uncompressed
//! initramfs with `rdinit=/sbin/init`. A test unit in the guest runs the driver
//! (`src/bin/vm_systemd_driver.rs`), which installs the package and checks socket activation, the
//! hardened unit reading uinput devices, reload, the watchdog, stop, `systemd-analyze security`
//! and the journal. The test passes when the console shows the driver's PASS line.
//!
//! Needs root (mmdebstrap), qemu-system-x86, mmdebstrap and cpio, and the package built by
//! `cargo deb -p tillgate-daemon` (target/debian/tillgate_*.deb, newer than the sources it
//! packages). Without them it is skipped, unless CI=true, where it fails. Run it alone:
//! `cargo deb -p tillgate-daemon && cargo test -p tillgate-tests --test vm_systemd -- --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

const MARKER: &str = "TILLGATE-VM-RESULT:";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_owned()
}

/// The outer build's target directory (the parent of `target/tmp`).
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is target/tmp")
        .to_owned()
}

fn cache_dir() -> PathBuf {
    std::env::var_os("TILLGATE_VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("vm-cache"))
}

/// Says why the test cannot run: a failure on CI (CI=true), a skip elsewhere.
fn unavailable(reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "the systemd guest test cannot run: {reason}\n.ci/run installs qemu-system-x86, \
             mmdebstrap and cpio, fetches the kernel and builds the package; see README.md"
        );
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED systemd guest test: {reason}");
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Runs a helper script and returns the path it prints.
fn script(name: &str, args: &[&Path]) -> Result<PathBuf, String> {
    let script = workspace().join("tests/vm").join(name);
    let output = Command::new(&script)
        .args(args)
        .env("TILLGATE_VM_CACHE", cache_dir())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run {}: {e}", script.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} failed ({}): {}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(&output.stdout).trim(),
    ))
}

/// The newest modification time of the files under `dir`.
fn newest(dir: &Path) -> SystemTime {
    let mut latest = SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let time = if path.is_dir() {
            newest(&path)
        } else {
            path.metadata().unwrap().modified().unwrap()
        };
        latest = latest.max(time);
    }
    latest
}

/// The package `cargo deb -p tillgate-daemon` wrote, if it is newer than everything it packages.
fn package() -> Result<PathBuf, String> {
    let dir = target_dir().join("debian");
    let version = env!("CARGO_PKG_VERSION");
    let deb = std::fs::read_dir(&dir)
        .ok()
        .into_iter()
        .flatten()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("tillgate_{version}-"))
                && p.extension().is_some_and(|e| e == "deb")
        })
        .ok_or_else(|| {
            format!(
                "no tillgate_{version}-*.deb in {}: build it with `cargo deb -p tillgate-daemon` \
                 (cargo install cargo-deb)",
                dir.display()
            )
        })?;
    let built = deb.metadata().unwrap().modified().unwrap();
    let ws = workspace();
    let sources = ["daemon", "client/src", "proto", "systemd"]
        .iter()
        .map(|d| newest(&ws.join(d)))
        .max()
        .unwrap();
    if sources > built {
        return Err(format!(
            "{} is older than the sources it packages: rebuild it with `cargo deb -p tillgate-daemon`",
            deb.display()
        ));
    }
    Ok(deb)
}

struct Prerequisites {
    qemu: PathBuf,
    cpio: PathBuf,
    kernel: PathBuf,
    root: PathBuf,
    deb: PathBuf,
}

fn prerequisites() -> Result<Prerequisites, String> {
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        return Err("the x86_64 guest runs the binaries built on this host".into());
    }
    let need = |name: &str, package: &str| {
        find_program(name).ok_or_else(|| format!("{name} not found (apt-get install {package})"))
    };
    let qemu = need("qemu-system-x86_64", "qemu-system-x86")?;
    let cpio = need("cpio", "cpio")?;
    need("mmdebstrap", "mmdebstrap")?;
    if !nix::unistd::geteuid().is_root() {
        return Err("building the guest's Debian tree (mmdebstrap, chroot) needs root".into());
    }
    let deb = package()?;
    let kernel = script("fetch-kernel.sh", &[])?;
    let root = script("build-root.sh", &[&kernel])?;
    Ok(Prerequisites {
        qemu,
        cpio,
        kernel,
        root,
        deb,
    })
}

/// The test unit: runs the driver once the system is up, on the serial console, and powers the
/// guest off when it ends, whatever the outcome.
const TEST_UNIT: &str = "\
[Unit]
Description=tillgate systemd guest test
After=systemd-udevd.service systemd-journald.service systemd-modules-load.service systemd-udev-trigger.service
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=oneshot
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
ExecStart=/usr/local/sbin/vm-systemd-driver
";

/// Writes what the test adds to the cached tree (the package, the driver, the test unit) as a
/// second cpio archive; the kernel unpacks both, the second over the first.
fn overlay(pre: &Prerequisites, vm_dir: &Path) -> PathBuf {
    let tree = vm_dir.join("overlay");
    if tree.exists() {
        std::fs::remove_dir_all(&tree).unwrap();
    }
    let wants = tree.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::fs::create_dir_all(tree.join("root")).unwrap();
    std::fs::create_dir_all(tree.join("usr/local/sbin")).unwrap();
    std::fs::copy(&pre.deb, tree.join("root/tillgate.deb")).unwrap();
    let driver = tree.join("usr/local/sbin/vm-systemd-driver");
    let status = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&driver)
        .arg(tillgate_tests::bin("vm_systemd_driver"))
        .status()
        .expect("run strip (binutils)");
    assert!(status.success(), "strip failed: {status}");
    std::fs::set_permissions(&driver, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        tree.join("etc/systemd/system/tillgate-guest-test.service"),
        TEST_UNIT,
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "../tillgate-guest-test.service",
        wants.join("tillgate-guest-test.service"),
    )
    .unwrap();

    let list = "./etc\n./etc/systemd\n./etc/systemd/system\n\
                ./etc/systemd/system/tillgate-guest-test.service\n\
                ./etc/systemd/system/multi-user.target.wants\n\
                ./etc/systemd/system/multi-user.target.wants/tillgate-guest-test.service\n\
                ./root\n./root/tillgate.deb\n./usr\n./usr/local\n./usr/local/sbin\n\
                ./usr/local/sbin/vm-systemd-driver\n";
    let image = vm_dir.join("overlay.cpio");
    let mut cpio = Command::new(&pre.cpio)
        .args(["--quiet", "-o", "-H", "newc", "-R", "0:0"])
        .current_dir(&tree)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&image).unwrap())
        .spawn()
        .expect("run cpio");
    cpio.stdin
        .take()
        .unwrap()
        .write_all(list.as_bytes())
        .unwrap();
    let status = cpio.wait().unwrap();
    assert!(status.success(), "cpio failed ({status})");
    image
}

/// Boots the guest and returns its console output.
fn boot(pre: &Prerequisites, initramfs: &Path, vm_dir: &Path) -> String {
    let vmlinux = pre.kernel.join("vmlinux");
    let kernel = if vmlinux.exists() {
        vmlinux
    } else {
        pre.kernel.join("vmlinuz")
    };
    let console_path = vm_dir.join("console.log");
    let console = std::fs::File::create(&console_path).unwrap();
    let timeout = Duration::from_secs(
        std::env::var("TILLGATE_VM_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(600),
    );
    let started = Instant::now();
    // 1 GiB: the whole tree is unpacked into RAM (640 MB is the least that boots at all).
    let mut child = Command::new(&pre.qemu)
        .args(["-accel", "tcg", "-m", "1024M", "-smp", "1"])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(initramfs)
        .args([
            "-append",
            "console=ttyS0 rdinit=/sbin/init quiet loglevel=3 panic=-1 systemd.show_status=false",
        ])
        .stdin(Stdio::null())
        .stdout(console.try_clone().unwrap())
        .stderr(console)
        .spawn()
        .expect("start qemu");
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let output = String::from_utf8_lossy(&std::fs::read(&console_path).unwrap()).replace('\r', "");
    println!("---- guest console ({}) ----", console_path.display());
    println!("{output}");
    println!(
        "---- qemu ran {:.1} s, {} ----",
        started.elapsed().as_secs_f64(),
        match status {
            Some(status) => format!("exited {status}"),
            None => format!("killed after the {} s timeout", timeout.as_secs()),
        }
    );
    assert!(
        status.is_some(),
        "the guest did not power off within {} s; console:\n{output}",
        timeout.as_secs()
    );
    output
}

#[test]
fn package_under_systemd_as_pid_1() {
    let pre = match prerequisites() {
        Ok(pre) => pre,
        Err(reason) => return unavailable(&reason),
    };
    let vm_dir = target_dir().join("vm-systemd-guest");
    std::fs::create_dir_all(&vm_dir).unwrap();
    let overlay = overlay(&pre, &vm_dir);
    // The cached tree first, the overlay after it: one initrd, two archives.
    let image = vm_dir.join("initramfs.cpio");
    {
        let mut out = std::fs::File::create(&image).unwrap();
        for part in [&pre.root, &overlay] {
            std::io::copy(&mut std::fs::File::open(part).unwrap(), &mut out).unwrap();
        }
    }
    let console = boot(&pre, &image, &vm_dir);

    let result = console
        .lines()
        .filter_map(|line| line.trim().strip_prefix(MARKER))
        .map(str::trim)
        .collect::<Vec<_>>();
    assert_eq!(
        result,
        ["PASS"],
        "the guest test did not pass (want exactly one `{MARKER} PASS` line); console:\n{console}"
    );
}
