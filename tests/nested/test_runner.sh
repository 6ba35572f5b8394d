#!/usr/bin/env bash
# The runner's `kvm` command when a nested host fails under a test: a test
# that lost its host (a kernel panic), failed while the host's kernel
# reported a bug, or failed with a guest's KVM_EXIT_SHUTDOWN in its output
# runs again on a fresh host, at most MIG_NESTED_RETRIES (2) more times; a
# plain failure and a timeout never run again, and a timeout leaves the host
# stale, so that the next test boots a fresh one; `run` runs again too.
# Made-up jobs play each case; each run records the boot id of the host it
# ran on.
#   test_runner.sh BUILD SRC
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "${1:-$here/../../build}" && pwd)
why=$("$here/nested" check) || { echo "skip: no nested host can run here: $why"; exit 77; }
fail() { echo "FAIL: $*" >&2; exit 1; }

dir=$(mktemp -d "$build/nested-runner-test.XXXXXX") || fail "no folder for the host"
cleanup() {
	"$here/nested" down "$dir" >/dev/null 2>&1
	rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

# A job: SCENARIO, its runs counted in $dir/SCENARIO.runs (one boot id a
# line). It fails as the scenario says, then passes on the run given.
cat >"$dir/job.sh" <<'EOF'
scenario=$1 runs=$2.runs
cat /proc/sys/kernel/random/boot_id >>"$runs"
n=$(wc -l <"$runs")
case $scenario in
plain) echo "a plain failure"; exit 3 ;;
shutdown) # a guest triple-faults twice, then all is well
	[ "$n" -ge 3 ] && exit 0
	echo "migvm: vCPU 0: guest shut down (triple fault, KVM_EXIT_SHUTDOWN)"
	exit 1 ;;
shutdown-always)
	echo "migvm: vCPU 0: guest shut down (triple fault, KVM_EXIT_SHUTDOWN)"
	exit 1 ;;
bug) # the host's kernel reports a bug while the test fails, once
	[ "$n" -ge 2 ] && exit 0
	echo "<1>BUG: made up by the nested runner's test" >/dev/kmsg
	sleep 1
	exit 1 ;;
bug-passing) # a bug reported by a test that passes: no run again
	echo "<1>BUG: made up by the nested runner's test, passing" >/dev/kmsg
	sleep 1
	exit 0 ;;
panic) # the host's kernel panics, once
	[ "$n" -ge 2 ] && exit 0
	echo c >/proc/sysrq-trigger
	sleep 60
	exit 1 ;;
timeout) sleep 120 ;;
esac
EOF

export MIG_FORCE_NESTED=1 MIG_NESTED_MEM=1024 MIG_NESTED_CPUS=1 MIG_NESTED_RETRIES=2
"$here/nested" fixture-up "$dir" --build "$build" || fail "the fixture's host did not boot"

# SCENARIO RC RUNS HOSTS [TIMEOUT]: `kvm` ends SCENARIO with RC after RUNS
# runs of it on HOSTS different hosts.
expect() {
	local scenario=$1 want_rc=$2 want_runs=$3 want_hosts=$4 to=${5:-120}
	local rc=0 out runs hosts
	# Not in a subshell: a host that `kvm` boots belongs to its parent
	# (CTest, for the tests), and ends with it.
	"$here/nested" kvm "$dir" --timeout "$to" -- \
		bash "$dir/job.sh" "$scenario" "$dir/$scenario" >"$dir/out" 2>&1 || rc=$?
	out=$(cat "$dir/out")
	runs=$(wc -l <"$dir/$scenario.runs" 2>/dev/null || echo 0)
	hosts=$(sort -u "$dir/$scenario.runs" 2>/dev/null | wc -l)
	[ "$rc" = "$want_rc" ] && [ "$runs" = "$want_runs" ] && [ "$hosts" = "$want_hosts" ] ||
		fail "$scenario: exit $rc after $runs run(s) on $hosts host(s), expected exit $want_rc after $want_runs on $want_hosts; the runner said:
$out"
	OUT=$out
	echo "ok: $scenario: exit $rc after $runs run(s) on $hosts host(s)"
}

expect plain 3 1 1
expect bug-passing 0 1 1
expect shutdown 0 3 3
grep -q "run 3 of at most 3" <<<"$OUT" || fail "shutdown: the third run was not announced: $OUT"
expect shutdown-always 1 3 3
grep -q "on each of 3 hosts: the test fails" <<<"$OUT" ||
	fail "shutdown-always: the last failure was not explained: $OUT"
expect bug 0 2 2
grep -q "made up by the nested runner's test" <<<"$OUT" ||
	fail "bug: the kernel's words were not reported: $OUT"
expect panic 0 2 2
grep -q "lost under" <<<"$OUT" || fail "panic: the lost host was not reported: $OUT"
expect timeout 124 1 1 5
[ -e "$dir/stale" ] || fail "timeout: the host was not left stale"
# The next test after a timeout runs on a fresh host.
expect plain 3 2 2
grep -q "timed out or lost the host" <<<"$OUT" ||
	fail "after a timeout: no fresh host was announced: $OUT"

# `run` (a host of its own per command) does the same: its host panics
# under the job once, and the job runs again on a fresh host.
"$here/nested" down "$dir" >/dev/null 2>&1
rc=0
"$here/nested" run --mem 1024 --cpus 1 --build "$build" --timeout 200 -- \
	bash "$dir/job.sh" panic "$dir/run-panic" >"$dir/out" 2>&1 || rc=$?
OUT=$(cat "$dir/out")
runs=$(wc -l <"$dir/run-panic.runs" 2>/dev/null || echo 0)
hosts=$(sort -u "$dir/run-panic.runs" 2>/dev/null | wc -l)
[ "$rc" = 0 ] && [ "$runs" = 2 ] && [ "$hosts" = 2 ] ||
	fail "run, panic: exit $rc after $runs run(s) on $hosts host(s), expected exit 0 after 2 on 2; the runner said:
$OUT"
grep -q "lost under.*running .* again (run 2 of at most 3)" <<<"$OUT" ||
	fail "run, panic: the lost host and the run again were not reported: $OUT"
echo "ok: run: exit 0 after 2 runs on 2 hosts, the lost host reported"
echo "ok: the nested runner runs a test again on a fresh host only when the host failed under it"
