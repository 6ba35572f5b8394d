#!/usr/bin/env bash
# Helpers for the migvm tests (tests/integration/test_vm_*.sh), which source
# this file. Run as a test itself, it checks migvm's help and usage texts.
#
#   vm_init BUILD SRC [nokvm]   set MIGVM, TG, WORK; exit 77 without /dev/kvm
#                               unless "nokvm" (the test does not need it)
#   need_testguest              exit 77 if the test guest is not part of the
#                               tree yet, fail if it is but was not built
#   start_vm NAME ARGS...       run migvm in the background (console and
#                               stderr to $WORK/NAME.out / NAME.err); sets
#                               VM_PID; every VM is killed at exit
#   ctl ARGS...                 `migvm ctl ARGS...` with a timeout
#   wait_sock SOCK              wait (10 s) until the control socket answers
#   status SOCK; field KEY      `migvm ctl SOCK status` into $STATUS; a field
#   wait_hb SOCK N [SECS]       wait until the console has shown N heartbeats
#   wait_exit PID SECS          wait for a VM to end; its exit code in $RC
#   ram_info PID MIB            of the guest RAM (the MIB MiB mapping) of the
#                               migvm at PID (or its `timeout` parent): how
#                               it asks to be backed, "huge" or "base"
#                               (VmFlags hg / nh), in RAM_THP, and its
#                               AnonHugePages in KiB in RAM_HUGE_KB
#   thp_mode                    the host's THP mode (always, madvise, never),
#                               or nothing on a kernel without THP
#   fail MSG / ok MSG           end the test / report progress
set -uo pipefail

fail() {
	echo "FAIL: $*" >&2
	for f in "${WORK:-/nonexistent}"/*.err; do
		[ -s "$f" ] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }
	done
	exit 1
}

ok() {
	echo "ok: $*"
}

VM_PIDS=()

cleanup() {
	for p in "${VM_PIDS[@]}"; do
		kill -TERM "$p" 2>/dev/null
	done
	for p in "${VM_PIDS[@]}"; do
		for _ in $(seq 50); do
			kill -0 "$p" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$p" 2>/dev/null
	done
	[ -n "${WORK:-}" ] && rm -rf "$WORK"
}

vm_init() {
	BUILD=$1
	SRC=$2
	MIGVM=$BUILD/vmm/migvm
	[ -x "$MIGVM" ] || fail "migvm not built at $MIGVM"
	if [ "${3:-}" != nokvm ] && [ ! -c /dev/kvm ]; then
		echo "skip: /dev/kvm is absent"
		exit 77
	fi
	TG=${MIGVM_TESTGUEST:-$BUILD/vmm/testguest/testguest.elf}
	WORK=$(mktemp -d /tmp/migvm-test.XXXXXX)
	trap cleanup EXIT
}

thp_mode() {
	sed -n 's/.*\[\(.*\)\].*/\1/p' /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null
}

ram_info() {
	local pid=$1 mib=$2 out flags
	pid=$(pgrep -P "$pid" -x migvm || echo "$pid")
	out=$(awk -v kb=$((mib * 1024)) '
		/^[0-9a-f]+-[0-9a-f]+ / { size = 0 }
		/^Size:/ { size = $2 }
		/^AnonHugePages:/ && size == kb { huge = $2 }
		/^VmFlags:/ && size == kb { print huge + 0; print; exit }' \
		"/proc/$pid/smaps")
	[ -n "$out" ] || fail "no $mib MiB mapping in /proc/$pid/smaps"
	RAM_HUGE_KB=$(echo "$out" | head -n1)
	flags=$(echo "$out" | tail -n1)
	case " $flags " in
	*" hg "*) RAM_THP=huge ;;
	*" nh "*) RAM_THP=base ;;
	*) fail "guest RAM of pid $pid is neither hg nor nh: $flags" ;;
	esac
}

need_testguest() {
	if [ ! -r "$TG" ]; then
		if [ -f "$SRC/vmm/testguest/CMakeLists.txt" ]; then
			fail "the test guest was not built ($TG)"
		fi
		echo "skip: the test guest is not in this tree yet"
		exit 77
	fi
	export MIGVM_TESTGUEST=$TG
}

start_vm() {
	local name=$1
	shift
	timeout -s TERM 240 "$MIGVM" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
	VM_PID=$!
	VM_PIDS+=("$VM_PID")
}

# `migvm ctl`, bounded in time.
ctl() {
	timeout -s KILL 120 "$MIGVM" ctl "$@"
}

wait_sock() {
	for _ in $(seq 200); do
		ctl "$1" status >/dev/null 2>&1 && return 0
		sleep 0.05
	done
	fail "control socket $1 did not answer within 10 s"
}

status() {
	STATUS=$(ctl "$1" status) || fail "status on $1 failed"
}

field() {
	local v
	v=$(printf '%s' "$STATUS" | grep -o "\"$1\":[^,}]*" | cut -d: -f2 | tr -d '"')
	[ -n "$v" ] || fail "no field $1 in status: $STATUS"
	echo "$v"
}

wait_hb() {
	local sock=$1 n=$2 secs=${3:-30} i
	for i in $(seq $((secs * 10))); do
		status "$sock"
		[ "$(field hb_lines)" -ge "$n" ] && return 0
		sleep 0.1
	done
	fail "fewer than $n heartbeats after $secs s: $STATUS"
}

wait_exit() {
	local pid=$1 secs=$2
	for _ in $(seq $((secs * 10))); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -0 "$pid" 2>/dev/null && fail "migvm (pid $pid) still runs after $secs s"
	wait "$pid"
	RC=$?
}

# Run as a test: help and usage texts.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
	vm_init "$1" "$2" nokvm
	out=$("$MIGVM" --help) || fail "--help exited $?"
	for opt in --mem --cpus --mem-backend --kernel --cmdline --console \
		--control --restore --corrupt-gpa; do
		grep -q -- "$opt" <<<"$out" || fail "--help does not mention $opt"
	done
	ok "--help lists every option"
	ctl >/dev/null 2>"$WORK/ctl.err"
	[ $? -eq 2 ] || fail "migvm ctl without arguments should exit 2"
	grep -q "usage: migvm ctl" "$WORK/ctl.err" || fail "no ctl usage text"
	ok "migvm ctl usage"
fi
