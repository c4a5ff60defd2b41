//! Real-kernel end-to-end test of hardware input. The host kernel has no uinput, so this boots a
//! Debian kernel in qemu (TCG) with a small initramfs: busybox, the evdev and uinput modules, and
//! the `tillgated` and test driver (`src/bin/vm_driver.rs`) binaries this workspace's build made
//! (with the shared libraries they load). The driver creates a key reader and a PIN pad with
//! uinput, types on them and checks the session events, plus a reader whose grab another
//! descriptor holds (the daemon must not read it until it has grabbed it itself). The test passes when the guest's console
//! shows the driver's PASS line.
//!
//! Needs qemu-system-x86, busybox-static and cpio (Debian packages) and the kernel that
//! `tests/vm/fetch-kernel.sh` fetches. Without them it is skipped, unless CI=true, where it fails.
//! Run it alone: `cargo build -p tillgate-daemon && cargo test -p tillgate-tests --test vm -- --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// Says why the test cannot run: a failure on CI (CI=true), a skip elsewhere.
fn unavailable(reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "the real-kernel test cannot run: {reason}\n.ci/run installs qemu-system-x86, \
             busybox-static and cpio and fetches the kernel; see README.md"
        );
    }
    // Straight to stderr, past the test harness's capture, so the skip shows in `cargo test`.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED real-kernel input test: {reason}"
    );
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// True for a 64-bit ELF executable without a program interpreter, i.e. statically linked.
fn is_static_elf(path: &Path) -> std::io::Result<bool> {
    let bytes = std::fs::read(path)?;
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u64_at = |at: usize| {
        bytes
            .get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    if bytes.get(..5) != Some(b"\x7fELF\x02") {
        return Ok(false);
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return Ok(false);
    };
    const PT_INTERP: u32 = 3;
    let has_interp = (0..usize::from(phnum)).any(|i| {
        let at = phoff as usize + i * usize::from(phentsize);
        bytes
            .get(at..at + 4)
            .is_some_and(|b| u32::from_le_bytes(b.try_into().unwrap()) == PT_INTERP)
    });
    Ok(!has_interp)
}

struct Prerequisites {
    qemu: PathBuf,
    busybox: PathBuf,
    cpio: PathBuf,
    strip: PathBuf,
    kernel: PathBuf,
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
    let strip = need("strip", "binutils")?;
    let busybox = need("busybox", "busybox-static")?;
    if !is_static_elf(&busybox).map_err(|e| format!("read {}: {e}", busybox.display()))? {
        return Err(format!(
            "{} is not statically linked (apt-get install busybox-static)",
            busybox.display()
        ));
    }
    let script = workspace().join("tests/vm/fetch-kernel.sh");
    let output = Command::new(&script)
        .env(
            "TILLGATE_VM_CACHE",
            std::env::var_os("TILLGATE_VM_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| target_dir().join("vm-cache")),
        )
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run {}: {e}", script.display()))?;
    if !output.status.success() {
        return Err(format!(
            "no guest kernel: {} failed ({}): {}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let kernel = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    Ok(Prerequisites {
        qemu,
        busybox,
        cpio,
        strip,
        kernel,
    })
}

/// Copies an executable into the guest tree without its debug info, plus the shared libraries it
/// loads (at the same paths, as `ldd` lists them), so a dynamically linked debug build runs there
/// as it is. A static binary (e.g. through TILLGATE_BIN_DIR) needs no libraries.
fn install_exe(pre: &Prerequisites, from: &Path, root: &Path, to: &str) {
    let status = Command::new(&pre.strip)
        .arg("--strip-debug")
        .arg("-o")
        .arg(root.join(to))
        .arg(from)
        .status()
        .expect("run strip");
    assert!(
        status.success(),
        "strip {} failed ({status})",
        from.display()
    );
    if is_static_elf(from).unwrap() {
        return;
    }
    let output = Command::new("ldd").arg(from).output().expect("run ldd");
    assert!(
        output.status.success(),
        "ldd {} failed: {}",
        from.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
        let Some(library) = line.split_whitespace().find(|w| w.starts_with('/')) else {
            continue;
        };
        let inside = root.join(library.trim_start_matches('/'));
        if !inside.exists() {
            std::fs::create_dir_all(inside.parent().unwrap()).unwrap();
            copy(Path::new(library), &inside);
        }
    }
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
insmod /lib/modules/evdev.ko || echo "init: insmod evdev.ko failed"
insmod /lib/modules/uinput.ko || echo "init: insmod uinput.ko failed"
echo "init: starting vm_driver after $(cut -d' ' -f1 /proc/uptime) s"
/bin/vm_driver
echo "init: vm_driver exited with status $? after $(cut -d' ' -f1 /proc/uptime) s"
poweroff -f
"#;

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
}

/// Writes the initramfs (an uncompressed cpio newc archive) and returns its path.
fn initramfs(pre: &Prerequisites, vm_dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;

    let root = vm_dir.join("initramfs");
    if root.exists() {
        std::fs::remove_dir_all(&root).unwrap();
    }
    for dir in [
        "bin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
        "etc",
        "lib/modules",
    ] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    copy(&pre.busybox, &root.join("bin/busybox"));
    install_exe(
        pre,
        &tillgate_tests::bin("tillgated"),
        &root,
        "bin/tillgated",
    );
    install_exe(
        pre,
        &tillgate_tests::bin("vm_driver"),
        &root,
        "bin/vm_driver",
    );
    for module in ["evdev.ko", "uinput.ko"] {
        copy(
            &pre.kernel.join(module),
            &root.join("lib/modules").join(module),
        );
    }
    std::fs::write(root.join("init"), INIT).unwrap();
    for exe in ["init", "bin/busybox", "bin/tillgated", "bin/vm_driver"] {
        std::fs::set_permissions(root.join(exe), std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    let mut entries = Vec::new();
    list_tree(&root, Path::new(""), &mut entries);
    let list: String = entries
        .iter()
        .map(|p| format!("{}\n", p.display()))
        .collect();
    let image = vm_dir.join("initramfs.cpio");
    let mut cpio = Command::new(&pre.cpio)
        .args(["--quiet", "-o", "-H", "newc", "-R", "0:0"])
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&image).unwrap())
        .spawn()
        .expect("run cpio");
    std::io::Write::write_all(&mut cpio.stdin.take().unwrap(), list.as_bytes()).unwrap();
    let status = cpio.wait().unwrap();
    assert!(
        status.success(),
        "cpio failed to build the initramfs ({status})"
    );
    image
}

/// Every path under `root`, relative to it, parents before children, sorted.
fn list_tree(root: &Path, relative: &Path, out: &mut Vec<PathBuf>) {
    let mut names = std::fs::read_dir(root.join(relative))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect::<Vec<_>>();
    names.sort();
    for name in names {
        let path = relative.join(name);
        out.push(path.clone());
        if root.join(&path).is_dir() {
            list_tree(root, &path, out);
        }
    }
}

/// Boots the guest and returns its console output.
fn boot(pre: &Prerequisites, initramfs: &Path, vm_dir: &Path) -> String {
    // The uncompressed vmlinux boots through qemu's PVH entry, about twice as fast under TCG.
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
            .unwrap_or(300),
    );
    let started = Instant::now();
    // KVM is no use here (guests hang on these machines); TCG is portable and fast enough.
    let mut child = Command::new(&pre.qemu)
        .args(["-accel", "tcg", "-m", "512M", "-smp", "1"])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 quiet loglevel=3 panic=-1"])
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
        std::thread::sleep(Duration::from_millis(100));
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
fn real_kernel_input() {
    let pre = match prerequisites() {
        Ok(pre) => pre,
        Err(reason) => return unavailable(&reason),
    };
    let vm_dir = target_dir().join("vm-guest");
    std::fs::create_dir_all(&vm_dir).unwrap();
    let image = initramfs(&pre, &vm_dir);
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
