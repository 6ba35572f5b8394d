#!/usr/bin/env bash
# libmigrate's ABI is the last release's, or only adds to it
# (scripts/abi.sh, libabigail); and the check can fail: against a baseline
# in which mig_error's message sat elsewhere it reports an incompatible
# change, and against one without mig_dest_port() a compatible addition.
set -uo pipefail
build=$1 src=$2
fail() { echo "FAIL: $*" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

out=$("$src/scripts/abi.sh" check "$build") || fail "the ABI check: $out"
echo "ok: $out"
base=$(ls "$src"/libmigrate/abi/libmigrate.so.*.abi | head -n1)

# mig_error.msg 32 bits further on: a layout change.
python3 - "$base" "$work/moved.abi" <<'PY' || fail "could not make the moved baseline"
import re, sys
s = open(sys.argv[1]).read()
i = s.index("<class-decl name='mig_error'")
j = s.index("name='msg'", i)
k = s.rindex("layout-offset-in-bits='32'", i, j)
open(sys.argv[2], "w").write(s[:k] + "layout-offset-in-bits='64'" + s[k + 26:])
PY
out=$(MIG_ABI_BASELINE=$work/moved.abi "$src/scripts/abi.sh" check "$build")
rc=$?
[ "$rc" = 1 ] || fail "a moved mig_error.msg: exit $rc, expected 1: $out"
grep -q "INCOMPATIBLE" <<<"$out" && grep -q "mig_error" <<<"$out" ||
	fail "a moved mig_error.msg not named: $out"
echo "ok: a moved mig_error.msg is reported incompatible"

# No mig_dest_port in the old ABI: adding it is compatible.
python3 - "$base" "$work/fewer.abi" <<'PY' || fail "could not make the smaller baseline"
import re, sys
s = open(sys.argv[1]).read()
s = re.sub(r"\s*<elf-symbol name='mig_dest_port'[^>]*/>", "", s)
s = re.sub(r"\s*<function-decl name='mig_dest_port'.*?</function-decl>", "", s,
           flags=re.S)
open(sys.argv[2], "w").write(s)
PY
out=$(MIG_ABI_BASELINE=$work/fewer.abi "$src/scripts/abi.sh" check "$build")
rc=$?
[ "$rc" = 0 ] || fail "an added function: exit $rc, expected 0: $out"
grep -q "additions" <<<"$out" && grep -q "mig_dest_port" <<<"$out" ||
	fail "the added mig_dest_port not reported: $out"
echo "ok: an added function is a compatible addition"
