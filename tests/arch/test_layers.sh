#!/usr/bin/env bash
# The architecture the README promises, checked on the build's object
# files: in libmigrate, in migd and in migvm no two source files call each
# other, directly or round about (scripts/layers.py: each file calls only
# those below it), and vmm/ and daemon/ include none of libmigrate's
# internal headers (they use the public API, as any VMM would).
# The checker is shown to catch a circle first, on two files made here.
# 9 s on an idle machine; CTest may run it beside two emulated hosts.
# ctest-timeout: 300
set -euo pipefail
build=$(cd "$1" && pwd) src=$(cd "$2" && pwd)
layers=$src/scripts/layers.py
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cat >"$work/a.c" <<'C'
void b(void);
void a(void) { b(); }
C
cat >"$work/b.c" <<'C'
void a(void);
void b(void) { a(); }
C
cc -c -o "$work/a.o" "$work/a.c" && cc -c -o "$work/b.o" "$work/b.c"
if out=$(python3 "$layers" "$work/a.o" "$work/b.o"); then
	echo "FAIL: layers.py saw no circle in a.c <-> b.c"; exit 1
fi
grep -q "circle: a b" <<<"$out" || { echo "FAIL: layers.py said: $out"; exit 1; }

rc=0
for part in libmigrate/CMakeFiles/mig_objs.dir/src daemon/CMakeFiles/migd.dir \
	vmm/CMakeFiles/migvm.dir; do
	objs=("$build/$part"/*.o)
	[ -e "${objs[0]}" ] || { echo "FAIL: no object files in $build/$part"; exit 1; }
	if out=$(python3 "$layers" "${objs[@]}"); then
		echo "ok: ${#objs[@]} files of $part call each other in no circle"
	else
		echo "FAIL: $part: $out"
		rc=1
	fi
done

# An include that is none of the file's own directory's headers (nor a
# generated one) but one of libmigrate/src's is an internal header.
for f in "$src"/vmm/*.[ch] "$src"/daemon/*.[ch]; do
	for h in $(sed -n 's/^#include "\([^"]*\)".*/\1/p' "$f"); do
		[ -e "$(dirname "$f")/$h" ] && continue
		if [ -e "$src/libmigrate/src/$h" ]; then
			echo "FAIL: ${f#"$src"/} includes libmigrate's internal $h"
			rc=1
		fi
	done
done
[ $rc = 0 ] && echo "ok: vmm/ and daemon/ use only libmigrate's public headers"
exit $rc
