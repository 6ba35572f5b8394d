#!/usr/bin/env bash
# A smoke subset of the KVM tests in a nested host of its own, wherever the
# other tests ran: where /dev/kvm is native (and maybe not hardware
# virtualisation) this keeps SVM with nested paging covered; everywhere it
# checks `nested run` end to end (exit status, output, a failing command).
#   test_smoke.sh BUILD SRC
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "${1:-$here/../../build}" && pwd)
src=$(cd "${2:-$here/../..}" && pwd)
why=$("$here/nested" check) || { echo "skip: no nested host can run here: $why"; exit 77; }
fail() { echo "FAIL: $*" >&2; exit 1; }

# The runner hands back the command's status and output, and ends a command
# at its timeout.
out=$("$here/nested" run --mem 1024 --timeout 20 -- bash -c \
	'echo "in $(uname -r)"; [ -c /dev/kvm ] || exit 9; sleep 60')
rc=$?
[ "$rc" = 124 ] || fail "a command past its timeout: exit $rc, expected 124 ($out)"
grep -q "^in .*-amd64$" <<<"$out" || fail "no output from inside: $out"
echo "ok: nested run: output, /dev/kvm inside, timeout ends the command ($out)"

cases="lockstep_bitmap lockstep_clear lockstep_ring concurrent_ring ring_enable"
"$here/nested" run --mem 4096 --build "$build" --timeout 600 -- bash -c '
	set -e
	cd "$1"
	for c in $3; do ./tests/kvm_test_dirty "$c"; done
	bash "$2/tests/integration/test_vm_oracle.sh" "$1" "$2"
' smoke "$build" "$src" "$cases" || fail "the smoke subset failed in the nested host"
echo "ok: dirty tracking ($cases) and test_vm_oracle pass in a nested host"
