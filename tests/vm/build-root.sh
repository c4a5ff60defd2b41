#!/usr/bin/env bash
# Builds the Debian userland for the systemd guest (tests/tests/vm_systemd.rs) and prints the
# path of its initramfs image, an uncompressed cpio archive of the whole tree:
#
#   <cache>/<key>/root.cpio
#
# The tree is the host's own Debian release (the guest runs the binaries built here), made with
# mmdebstrap from the host's Debian apt sources: minbase plus systemd as PID 1, udev, kmod and
# procps, with the evdev, uinput and autofs4 modules of the kernel that fetch-kernel.sh fetched.
# Units that only cost boot time under TCG are masked. <key> is a hash of this script and the
# kernel: nothing is rebuilt while neither changes.
#
# Usage: tests/vm/build-root.sh KERNEL_DIR [CACHE_DIR]
#   KERNEL_DIR is what fetch-kernel.sh printed; CACHE_DIR defaults to $TILLGATE_VM_CACHE, else
#   target/vm-cache in the workspace. Needs root (mmdebstrap, chroot, device nodes in the tree).
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
kernel="${1:?usage: build-root.sh KERNEL_DIR [CACHE_DIR]}"
cache="${2:-${TILLGATE_VM_CACHE:-$root/target/vm-cache}}"
mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"

die() {
    echo "build-root: $*" >&2
    exit 1
}

[ "$(id -u)" = 0 ] || die "needs root (mmdebstrap builds the tree as root)"
for tool in mmdebstrap cpio chroot sha256sum; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install mmdebstrap cpio)"
done
for file in PACKAGE evdev.ko uinput.ko autofs4.ko modules.builtin modules.builtin.modinfo modules.order; do
    [ -f "$kernel/$file" ] || die "$kernel/$file missing: run tests/vm/fetch-kernel.sh"
done

package="$(cat "$kernel/PACKAGE")"
release="${package#linux-image-}"
# shellcheck disable=SC1091
suite="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
[ -n "$suite" ] || die "cannot tell the host's Debian release from /etc/os-release"

key="$(cat "$0" "$kernel/PACKAGE" | sha256sum | cut -c1-16)"
dir="$cache/root-$suite-$key"
if [ -f "$dir/.complete" ]; then
    echo "$dir/root.cpio"
    exit 0
fi

# The host's Debian sources only (third-party repositories would not resolve the same way).
sources=()
for file in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    if [ -s "$file" ] && grep -q '^[^#]*debian' "$file"; then
        sources=("$file")
        break
    fi
done
[ "${#sources[@]}" -gt 0 ] || sources=(http://deb.debian.org/debian)

work="$(mktemp -d "$cache/.root.XXXXXX")"
trap 'rm -rf "$work"' EXIT
tree="$work/tree"
echo "build-root: mmdebstrap $suite from ${sources[*]}" >&2
mmdebstrap --variant=minbase --mode=root --quiet \
    --include=systemd,systemd-sysv,udev,kmod,procps,init-system-helpers \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    "$suite" "$tree" "${sources[@]}" </dev/null >&2 ||
    die "mmdebstrap failed"

modules="$tree/lib/modules/$release"
install -D -m 0644 "$kernel/evdev.ko" "$modules/kernel/drivers/input/evdev.ko"
install -D -m 0644 "$kernel/uinput.ko" "$modules/kernel/drivers/input/misc/uinput.ko"
install -D -m 0644 "$kernel/autofs4.ko" "$modules/kernel/fs/autofs/autofs4.ko"
cp "$kernel/modules.builtin" "$kernel/modules.builtin.modinfo" "$kernel/modules.order" "$modules/"
chroot "$tree" depmod -a "$release"
printf 'evdev\nuinput\n' >"$tree/etc/modules-load.d/tillgate-test.conf"

# A fixed machine id: no first-boot units. Root's console is the serial port.
echo 5c0ffee0c0de4f00ba11ab1e5ca1ab1e >"$tree/etc/machine-id"
echo tillgate-guest >"$tree/etc/hostname"
# Units that only cost boot time here (no login prompt, no timers, no debug mounts).
for unit in serial-getty@ttyS0.service getty@tty1.service getty.target \
    systemd-firstboot.service first-boot-complete.target \
    systemd-update-utmp.service systemd-update-utmp-runlevel.service \
    sys-kernel-debug.mount sys-kernel-tracing.mount sys-kernel-config.mount sys-fs-fuse-connections.mount \
    dev-hugepages.mount dev-mqueue.mount \
    systemd-journal-catalog-update.service systemd-hwdb-update.service systemd-random-seed.service \
    systemd-pstore.service systemd-boot-system-token.service systemd-binfmt.service \
    apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer fstrim.timer \
    systemd-tmpfiles-clean.timer timers.target \
    modprobe@.service; do
    ln -sfn /dev/null "$tree/etc/systemd/system/$unit"
done
rm -rf "$tree"/var/lib/apt/lists/* "$tree"/var/cache/apt/*.bin "$tree"/var/cache/apt/archives/*.deb

mkdir -p "$work/out"
(cd "$tree" && find . -print0 | LC_ALL=C sort -z | cpio --null --quiet -o -H newc >"$work/out/root.cpio") ||
    die "cpio of the tree failed"
touch "$work/out/.complete"
rm -rf "$dir"
mv "$work/out" "$dir"
echo "$dir/root.cpio"
