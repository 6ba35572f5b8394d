#!/usr/bin/env bash
# Fetch Debian's kernel and busybox-static packages (apt-get download, never
# installed) and build the nested host's initramfs from them, into a cache,
# with the kernel's ELF (vmlinux) and busybox kept for the Linux test VM:
#   tests/nested/fetch.sh [CACHE_DIR]
# CACHE_DIR defaults to `nested cache` ($MIG_NESTED_CACHE, else a folder in
# /var/cache for root, in ~/.cache for others).
# Idempotent: a cache that matches the candidate kernel is kept. Offline, an
# existing cache is used as it is. Prints the cache's kernel version.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${1:-$("$here/nested" cache)}
mkdir -p "$cache"

# The kernel package that linux-image-amd64 currently points at.
kpkg() {
	apt-cache depends linux-image-amd64 2>/dev/null |
		sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -n 1
}
kpkg=$(kpkg)
if [ -z "$kpkg" ] && [ "$(id -u)" = 0 ]; then
	apt-get update -q >/dev/null 2>&1 || true
	kpkg=$(kpkg)
fi
if [ -z "$kpkg" ]; then
	if [ -s "$cache/version" ]; then
		echo "nested: apt knows no linux-image-amd64; using the cached kernel $(cat "$cache/version")" >&2
		cat "$cache/version"; exit 0
	fi
	echo "nested: apt knows no linux-image-amd64 (run apt-get update) and $cache has no kernel" >&2
	exit 1
fi
kver=${kpkg#linux-image-}
if [ -s "$cache/version" ] && [ "$(cat "$cache/version")" = "$kver" ] &&
	[ -s "$cache/vmlinuz" ] && [ -s "$cache/initramfs.cpio.gz" ] &&
	[ -s "$cache/vmlinux" ] && [ -s "$cache/busybox" ] &&
	[ "$cache/initramfs.cpio.gz" -nt "$here/init" ] &&
	[ "$cache/initramfs.cpio.gz" -nt "$here/mkinitramfs.sh" ]; then
	echo "$kver"; exit 0
fi

dl=$(mktemp -d "$cache/dl.XXXXXX")
trap 'rm -rf "$dl"' EXIT
if ! (cd "$dl" && apt-get download -q "$kpkg" busybox-static >"$dl/apt.log" 2>&1); then
	if [ -s "$cache/version" ] && [ -s "$cache/initramfs.cpio.gz" ]; then
		echo "nested: could not download $kpkg; using the cached kernel $(cat "$cache/version")" >&2
		cat "$cache/version"; exit 0
	fi
	echo "nested: apt-get download $kpkg busybox-static failed:" >&2
	tail -n 5 "$dl/apt.log" >&2
	exit 1
fi
dpkg-deb -x "$dl"/linux-image-*.deb "$dl/k"
dpkg-deb -x "$dl"/busybox-static_*.deb "$dl/bb"
"$here/mkinitramfs.sh" "$dl/k/lib/modules/$kver" "$dl/bb/bin/busybox" \
	"$here/init" "$dl/initramfs.cpio.gz"
cp "$dl/k/boot/vmlinuz-$kver" "$dl/vmlinuz"
# The same kernel for the Linux test VM (vmm/linuxguest): the ELF inside
# the bzImage, which carries the PVH entry note migvm boots.
"$here/../../vmm/linuxguest/extract-vmlinux.sh" "$dl/vmlinuz" "$dl/vmlinux"
cp "$dl/bb/bin/busybox" "$dl/busybox"
# Replace the cache's files only once everything was built.
mv -f "$dl/vmlinuz" "$cache/vmlinuz"
mv -f "$dl/initramfs.cpio.gz" "$cache/initramfs.cpio.gz"
mv -f "$dl/vmlinux" "$cache/vmlinux"
mv -f "$dl/busybox" "$cache/busybox"
echo "$kver" >"$cache/version"
echo "$kver"
