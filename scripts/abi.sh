#!/usr/bin/env bash
# libmigrate's ABI against the last release's, with libabigail (Debian's
# abigail-tools): the public types (libmigrate/include/migrate/) and the
# exported functions, from the DWARF of a build with debug info
# (RelWithDebInfo, as scripts/test.sh builds).
#   scripts/abi.sh check BUILD    0: the same ABI, or only compatible
#                                 additions (reported); 1: an incompatible
#                                 change (a struct's layout, a function's
#                                 signature or one removed), reported
#   scripts/abi.sh update BUILD   make BUILD's ABI the baseline: at a
#                                 release (and with SOVERSION bumped if the
#                                 check said incompatible)
# The baseline: libmigrate/abi/libmigrate.so.<SOVERSION>.abi
# ($MIG_ABI_BASELINE instead, for check: tests/install/test_abi.sh).
set -uo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
cmd=${1:-} build=${2:-}
[ -n "$cmd" ] && [ -d "$build" ] || { echo "usage: $0 check|update BUILD" >&2; exit 2; }
for t in abidw abidiff; do
	command -v "$t" >/dev/null ||
		{ echo "abi.sh: $t not found (scripts/setup.sh installs abigail-tools)" >&2; exit 2; }
done
so=$(find "$build/libmigrate" -maxdepth 1 -name 'libmigrate.so.*.*.*' | head -n1)
[ -n "$so" ] || { echo "abi.sh: no libmigrate.so.X.Y.Z in $build/libmigrate" >&2; exit 2; }
sections=$(readelf -S "$so")
[[ $sections == *.debug_info* ]] ||
	{ echo "abi.sh: $so has no debug info: build with RelWithDebInfo" >&2; exit 2; }
soname=$(readelf -d "$so" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
base=$src/libmigrate/abi/$soname.abi
[ "$cmd" = check ] && [ -n "${MIG_ABI_BASELINE:-}" ] && base=$MIG_ABI_BASELINE
hdrs=$src/libmigrate/include/migrate
# The baseline keeps file names (not paths): abidiff tells the public
# types from the library's own by the header they come from.
abi_opts=(--drop-private-types --exported-interfaces-only)

case $cmd in
update)
	abidw --headers-dir "$hdrs" "${abi_opts[@]}" --no-corpus-path \
		--short-locs "$so" >"$base.tmp" && mv "$base.tmp" "$base" ||
		{ echo "abi.sh: abidw failed" >&2; exit 2; }
	echo "abi.sh: baseline $base written ($(grep -c '<elf-symbol' "$base") symbols)"
	;;
check)
	[ -f "$base" ] || { echo "abi.sh: no baseline $base (soname $soname): '$0 update' at the release that set it" >&2; exit 2; }
	report=$(abidiff --headers-dir2 "$hdrs" "${abi_opts[@]}" "$base" "$so")
	rc=$?
	# abidiff's status is a bit field: 1 error, 2 usage, 4 a change (of
	# any kind: an added function too), 8 a removed symbol. What matters
	# is in its summary: only "Added" may be non-zero.
	changed=$(sed -n 's/^\(Functions\|Variables\) changes summary: \([0-9]*\) Removed, \([0-9]*\) Changed.*/\2 \3/p' <<<"$report")
	if (( rc & 3 )) || { (( rc )) && [ -z "$changed" ]; }; then
		echo "abi.sh: abidiff failed ($rc): $report" >&2
		exit 2
	elif (( rc & 8 )) || [[ $changed =~ [1-9] ]]; then
		echo "abi.sh: INCOMPATIBLE with $soname's baseline (a type, a"
		echo "function or a variable changed or went):"
		echo "$report"
		exit 1
	elif (( rc & 4 )); then
		echo "abi.sh: compatible with $soname's baseline, with additions:"
		echo "$report"
	else
		echo "abi.sh: the same ABI as $soname's baseline"
	fi
	;;
*)
	echo "usage: $0 check|update BUILD" >&2
	exit 2
	;;
esac
