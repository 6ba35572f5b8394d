#!/usr/bin/env bash
# The Linux test VM's initramfs: busybox (static, from Debian's
# busybox-static), our init and workload, as a gzip'd newc cpio.
#   mkinitrd.sh BUSYBOX WORKLOAD INIT OUT
set -euo pipefail
[ $# = 4 ] || { echo "usage: $0 BUSYBOX WORKLOAD INIT OUT" >&2; exit 2; }
busybox=$1 workload=$2 init=$3 out=$4
for f in "$busybox" "$workload" "$init"; do
	[ -s "$f" ] || { echo "mkinitrd: $f: missing or empty" >&2; exit 1; }
done
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/proc" "$root/sys" "$root/dev" "$root/tmp"
install -m 755 "$busybox" "$root/bin/busybox"
install -m 755 "$workload" "$root/bin/workload"
install -m 755 "$init" "$root/init"
ln -s busybox "$root/bin/sh"
(cd "$root" && find . | LC_ALL=C sort | "$root/bin/busybox" cpio -o -H newc 2>/dev/null) |
	gzip -9n >"$out.tmp"
mv -f "$out.tmp" "$out"
