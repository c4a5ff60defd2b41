#!/usr/bin/env bash
# Fetches the Debian kernel for the real-kernel test (tests/tests/vm.rs) into a cache and prints
# the directory that holds it:
#
#   <cache>/<package>/vmlinuz     the bzImage
#   <cache>/<package>/vmlinux     its uncompressed ELF, booted through qemu's PVH entry (faster
#                                 under TCG); absent if it could not be extracted
#   <cache>/<package>/evdev.ko, uinput.ko
#   <cache>/<package>/autofs4.ko, modules.builtin, modules.builtin.modinfo, modules.order
#                                 for the systemd guest (tests/vm/build-root.sh), which runs
#                                 depmod and lets systemd load autofs4 as it does on a till
#
# The package is the one the linux-image-amd64 metapackage depends on (its ABI name changes with
# security updates), fetched with `apt-get download` and unpacked without installing it. Nothing
# is fetched when the cache already holds it. Needs apt's package lists (`apt-get update`).
#
# Usage: tests/vm/fetch-kernel.sh [CACHE_DIR]
#   CACHE_DIR defaults to $TILLGATE_VM_CACHE, else target/vm-cache in the workspace.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
cache="${1:-${TILLGATE_VM_CACHE:-$root/target/vm-cache}}"
mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"

die() {
    echo "fetch-kernel: $*" >&2
    exit 1
}

for tool in apt-cache apt-get dpkg-deb tar od dd; do
    command -v "$tool" >/dev/null || die "$tool not found (a Debian system is needed)"
done

# The generic flavour: the -cloud-amd64 kernel has no uinput.
package="$(apt-cache depends linux-image-amd64 2>/dev/null |
    awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9].*-amd64$/ { print $2; exit }')"
if [ -z "$package" ]; then
    if [ -f "$cache/current/.complete" ] && [ -f "$cache/current/autofs4.ko" ]; then
        echo "fetch-kernel: cannot resolve linux-image-amd64 (no apt lists?); using the cached $(readlink "$cache/current")" >&2
        echo "$cache/$(readlink "$cache/current")"
        exit 0
    fi
    die "cannot resolve the linux-image-amd64 metapackage: run 'apt-get update' first"
fi

dir="$cache/$package"
# A cache from before autofs4.ko was kept is fetched again.
if [ -f "$dir/.complete" ] && [ -f "$dir/autofs4.ko" ]; then
    ln -sfn "$package" "$cache/current"
    echo "$dir"
    exit 0
fi

work="$(mktemp -d "$cache/.fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT
echo "fetch-kernel: downloading $package" >&2
# As root apt would try to drop to its _apt user, which cannot write here.
(cd "$work" && apt-get download -q -o APT::Sandbox::User=root "$package" >&2) ||
    die "apt-get download $package failed"
deb="$(ls "$work"/*.deb)"

mkdir -p "$work/x" "$work/out"
dpkg-deb --fsys-tarfile "$deb" |
    tar -x -C "$work/x" --wildcards './boot/vmlinuz-*' \
        '*/kernel/drivers/input/evdev.ko*' '*/kernel/drivers/input/misc/uinput.ko*' \
        '*/kernel/fs/autofs/autofs4.ko*' '*/modules.builtin' '*/modules.builtin.modinfo' \
        '*/modules.order' ||
    die "$deb does not hold a kernel with the evdev and uinput modules"

cp "$work"/x/boot/vmlinuz-* "$work/out/vmlinuz"
for list in modules.builtin modules.builtin.modinfo modules.order; do
    file="$(find "$work/x" -name "$list" | head -n 1)"
    [ -n "$file" ] || die "no $list in $deb"
    cp "$file" "$work/out/$list"
done
for module in evdev uinput autofs4; do
    file="$(find "$work/x" -name "$module.ko*" | head -n 1)"
    case "$file" in
        *.ko) cp "$file" "$work/out/$module.ko" ;;
        *.ko.xz) xz -dc "$file" >"$work/out/$module.ko" ;;
        *.ko.zst) zstd -dc "$file" >"$work/out/$module.ko" ;;
        *.ko.gz) gzip -dc "$file" >"$work/out/$module.ko" ;;
        *) die "no $module.ko in $deb" ;;
    esac
done

# The bzImage's payload (offset and length in the setup header, counted from the protected-mode
# code after the setup sectors) is the compressed ELF vmlinux.
bz="$work/out/vmlinuz"
setup_sects="$(od -An -tu1 -j $((0x1f1)) -N1 "$bz" | tr -d ' ')"
payload_offset="$(od -An -tu4 -j $((0x248)) -N4 "$bz" | tr -d ' ')"
payload_length="$(od -An -tu4 -j $((0x24c)) -N4 "$bz" | tr -d ' ')"
start=$(((setup_sects + 1) * 512 + payload_offset))
magic="$(od -An -tx1 -j "$start" -N6 "$bz" | tr -d ' \n')"
case "$magic" in
    fd377a585a00) decompress=(xz -dc --single-stream) ;;
    1f8b*) decompress=(gzip -dc) ;;
    28b52ffd*) decompress=(zstd -dc) ;;
    *) decompress=() ;;
esac
if [ "${#decompress[@]}" -gt 0 ] && command -v "${decompress[0]}" >/dev/null &&
    dd if="$bz" iflag=skip_bytes,count_bytes skip="$start" count="$payload_length" bs=1M status=none |
    "${decompress[@]}" >"$work/out/vmlinux" 2>/dev/null &&
        [ "$(od -An -tx1 -N4 "$work/out/vmlinux" | tr -d ' \n')" = 7f454c46 ]; then
    :
else
    echo "fetch-kernel: could not extract vmlinux (payload magic $magic); qemu will boot the bzImage" >&2
    rm -f "$work/out/vmlinux"
fi

echo "$package" >"$work/out/PACKAGE"
touch "$work/out/.complete"
rm -rf "$dir"
mv "$work/out" "$dir"
ln -sfn "$package" "$cache/current"
echo "$dir"
