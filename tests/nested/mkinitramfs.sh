#!/usr/bin/env bash
# Build the nested host's initramfs: busybox, the kernel modules the host
# needs (KVM, virtio-9p, overlay, virtio-net, veth, tc qdiscs) with their
# dependencies in load order, and our /init.
#   mkinitramfs.sh MODULES_DIR BUSYBOX INIT OUT.cpio.gz
set -euo pipefail
moddir=$1 busybox=$2 init=$3 out=$4
want=(kvm kvm_amd kvm_intel virtio_pci 9pnet_virtio 9p overlay virtio_net
	veth sch_tbf sch_netem)

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,dev,proc,sys,mnt,newroot,tmp,lib/modules}

declare -A path deps
while IFS= read -r f; do
	n=$(basename "$f" .ko); path[${n//-/_}]=$f
done < <(find "$moddir/kernel" -name '*.ko')
modinfo_deps() {
	objcopy -O binary --only-section=.modinfo "$1" /dev/stdout |
		tr '\0' '\n' | sed -n 's/^depends=//p' | tr ',' ' '
}
order=()
declare -A seen
visit() { # NAME: its dependencies first, then itself
	local n=${1//-/_} d
	[ -n "${seen[$n]:-}" ] && return 0
	seen[$n]=1
	[ -n "${path[$n]:-}" ] || { echo "mkinitramfs: no module $n in $moddir" >&2; exit 1; }
	for d in $(modinfo_deps "${path[$n]}"); do visit "$d"; done
	order+=("$n")
}
for m in "${want[@]}"; do visit "$m"; done
for n in "${order[@]}"; do cp "${path[$n]}" "$root/lib/modules/$n.ko"; done
printf '%s\n' "${order[@]}" >"$root/lib/modules/load.order"

cp "$busybox" "$root/bin/busybox"
cp "$init" "$root/init"
chmod 755 "$root/init" "$root/bin/busybox"
(cd "$root" && find . | "$root/bin/busybox" cpio -o -H newc 2>/dev/null) |
	gzip -1 >"$out.tmp"
mv -f "$out.tmp" "$out"
