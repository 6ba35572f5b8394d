#!/usr/bin/env bash
# The ELF kernel (vmlinux) inside an x86 bzImage, as migvm boots it (PVH):
# the boot protocol's header gives the compressed payload (payload_offset,
# payload_length, from 2.08 on), which is decompressed with xz, gzip or
# zstd. Debian's generic kernels are XZ.
#   extract-vmlinux.sh BZIMAGE OUT
set -euo pipefail
[ $# = 2 ] || { echo "usage: $0 BZIMAGE OUT" >&2; exit 2; }
in=$1 out=$2
u8() { od -An -tu1 -j "$1" -N 1 "$in" | tr -d ' '; }
u16() { od -An -tu2 -j "$1" -N 2 "$in" | tr -d ' '; }
u32() { od -An -tu4 -j "$1" -N 4 "$in" | tr -d ' '; }
size=$(stat -c %s "$in")
[ "$size" -gt 1024 ] && [ "$(od -An -c -j 514 -N 4 "$in" | tr -d ' ')" = HdrS ] ||
	{ echo "extract-vmlinux: $in: not a bzImage (no HdrS header)" >&2; exit 1; }
version=$(u16 518)
[ "$version" -ge $((0x208)) ] ||
	{ echo "extract-vmlinux: $in: boot protocol $(printf %x "$version"), before 2.08 (no payload fields)" >&2; exit 1; }
sects=$(u8 497)
[ "$sects" != 0 ] || sects=4
offset=$(( (sects + 1) * 512 + $(u32 584) ))
length=$(u32 588)
[ "$length" -gt 0 ] && [ $((offset + length)) -le "$size" ] ||
	{ echo "extract-vmlinux: $in: payload [$offset, +$length) outside the file" >&2; exit 1; }
magic=$(od -An -tx1 -j "$offset" -N 4 "$in" | tr -d ' ')
case $magic in
fd377a58) dec=(xz -dcq --single-stream) ;; # the size appended after it is no xz
1f8b*) dec=(gzip -dc) ;;
28b52ffd) dec=(zstd -dcq) ;;
*) echo "extract-vmlinux: $in: payload compressed with an unsupported method (magic $magic)" >&2; exit 1 ;;
esac
trap 'rm -f "$out.z" "$out.tmp"' EXIT
dd if="$in" of="$out.z" bs=1M iflag=skip_bytes,count_bytes skip="$offset" \
	count="$length" status=none
"${dec[@]}" <"$out.z" >"$out.tmp"
[ "$(od -An -c -N 4 "$out.tmp" | tr -d ' ')" = 177ELF ] ||
	{ echo "extract-vmlinux: $in: the payload is not an ELF" >&2; exit 1; }
mv -f "$out.tmp" "$out"
