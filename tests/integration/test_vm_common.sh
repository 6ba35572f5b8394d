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
#                               VM_PID; every VM is killed at exit (and, in
#                               case the test itself was killed, by
#                               timeout(1) after 400 s: longer than CTest
#                               lets any test run)
#   bounded SECS CMD...         CMD, killed (SIGKILL) if it runs SECS s
#   ctl ARGS...                 `migvm ctl ARGS...`, bounded (120 s)
#   poll_until SECS CMD...      run CMD until it succeeds; false after SECS s
#                               (and at most 10 tries a second)
#   nap SECS                    sleep without starting a process
#   pid_gone PID                PID has ended (gone, or a zombie not yet reaped)
#   wait_sock SOCK [SECS]       wait (120 s) until the control socket answers
#   status SOCK; field KEY      `migvm ctl SOCK status` into $STATUS; a field
#   console_hbs FILE            the complete heartbeat lines of a console
#                               file (one still being printed does not
#                               count) into the array HBS, with the shell's
#                               own reads
#   console_hbs_at_least FILE N at least N of them
#   wait_hb SOCK N [SECS]       wait (120 s) until the console has shown N
#                               heartbeats
#   wait_exit PID SECS          wait for a VM to end; its exit code in $RC
#   test_deadline SECS          stop the test (a failure, cleaned up) once it
#                               has run SECS s (twice that in a nested host):
#                               under CTest's own timeout
#   ram_info PID MIB            of the guest RAM (the MIB MiB mapping) of the
#                               migvm at PID (or its `timeout` parent): how
#                               it asks to be backed, "huge" or "base"
#                               (VmFlags hg / nh), in RAM_THP, and its
#                               AnonHugePages in KiB in RAM_HUGE_KB
#   thp_mode                    the host's THP mode (always, madvise, never),
#                               or nothing on a kernel without THP
#   pki_ca DIR                  a CA of the test's own: DIR/ca-cert.pem and
#                               DIR/ca-key.pem (openssl, ECDSA P-256, a day)
#   pki_cert DIR WHO SAN [EXT]  DIR/WHO-cert.pem and DIR/WHO-key.pem, signed
#                               by DIR's CA, for SAN (DNS:a.test,IP:127.0.0.1),
#                               EXT one more extension line (openssl's)
#   fail MSG / ok MSG           end the test / report progress
#
# The machine's speed is not known (the tests also run in a nested KVM host
# under emulation, many times slower, where starting a process can take a
# second): every wait is for a condition, and its bound, in seconds, only
# ends a test that is stuck; the helpers that loops call start as few
# processes as they can (field, nap, bounded). SIGTERM, SIGINT or SIGHUP
# (CTest's timeout, ^C) end a test as a failure, through the same clean-up
# as any other exit: its VMs and other processes are ended and $WORK is
# removed.
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
WATCHDOG=

# The processes below PID (children, theirs, ...), from one look at the
# process table, nearest first (the caller's own `ps` and `awk` among them:
# gone by the time it reads the list).
descendants() {
	ps -e -o pid=,ppid= 2>/dev/null | awk -v root="$1" '
		{ parent[$1] = $2; pids[n++] = $1 }
		END {
			want[root] = 1
			do {
				more = 0
				for (i = 0; i < n; i++) {
					p = pids[i]
					if (!(p in want) && (parent[p] in want)) {
						want[p] = 1; order[m++] = p; more = 1
					}
				}
			} while (more)
			for (i = 0; i < m; i++) print order[i]
		}'
}

# Where PID and the processes below it are stuck, for a failure message:
# each thread's state, kernel wait channel and (as root) kernel stack, then
# the kernel log's tail. What cannot be read is left out.
where_stuck() { # PID
	local p t
	for p in "$1" $(descendants "$1"); do
		[ -d "/proc/$p" ] || continue
		echo "--- process $p: $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-120)"
		for t in /proc/"$p"/task/*; do
			echo "thread ${t##*/} $(cat "$t/comm" 2>/dev/null) state=$(awk '{print $3}' "$t/stat" 2>/dev/null) wchan=$(cat "$t/wchan" 2>/dev/null)"
			sed 's/^/    /' "$t/stack" 2>/dev/null | head -n 12
		done
	done
	echo "--- kernel log"
	dmesg 2>/dev/null | tail -n 30
}

cleanup() {
	local p left
	[ -n "$WATCHDOG" ] && kill -TERM "$WATCHDOG" 2>/dev/null
	for p in "${VM_PIDS[@]}"; do
		kill -TERM "$p" 2>/dev/null
	done
	for p in "${VM_PIDS[@]}"; do
		poll_until 5 pid_gone "$p"
		kill -KILL "$p" 2>/dev/null
	done
	# Whatever else the test started and left running (a command it was
	# waiting for when it was stopped, say) ends too.
	left=()
	for p in $(descendants $$); do
		kill -TERM "$p" 2>/dev/null && left+=("$p")
	done
	for p in "${left[@]}"; do
		poll_until 5 pid_gone "$p"
		kill -KILL "$p" 2>/dev/null
	done
	[ -n "${WORK:-}" ] && rm -rf "$WORK"
}

on_signal() { # SIG: stopped from outside (or by test_deadline): a failure
	trap - TERM INT HUP
	if [ -n "${WORK:-}" ] && [ -e "$WORK/.deadline" ]; then
		echo "FAIL: stopped: still running after $(cat "$WORK/.deadline") s" >&2
	else
		echo "FAIL: stopped by SIG$1" >&2
	fi
	exit 1 # the EXIT trap cleans up
}

# test_deadline SECS: after SECS s, end what the test waits for (everything
# it started: a command in the foreground holds off the signal trap until
# it returns) and SIGTERM the test. The watchdog holds none of the test's
# output open (CTest waits for that to close) and ends with the test.
test_deadline() {
	local secs=$1 main=$$
	# A nested host runs tests up to twice as slow, and CTest gives them
	# twice the time there (tests/CMakeLists.txt).
	[ -z "${MIG_IN_NESTED:-}" ] || secs=$((secs * 2))
	[ -n "${WORK:-}" ] || fail "test_deadline before vm_init"
	(
		sp=
		trap '[ -n "$sp" ] && kill "$sp" 2>/dev/null; exit 0' TERM
		sleep "$secs" &
		sp=$!
		wait "$sp" || exit 0
		echo "$secs" >"$WORK/.deadline"
		kill -TERM "$main"
		victims=$(descendants "$main" | grep -vx -e "$BASHPID" -e "$sp")
		# shellcheck disable=SC2086
		[ -n "$victims" ] && kill -TERM $victims
	) </dev/null >/dev/null 2>&1 &
	WATCHDOG=$!
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
	# nap's clock: a read that times out on a FIFO no one writes to.
	mkfifo "$WORK/.nap" && exec {NAP_FD}<>"$WORK/.nap"
	trap 'on_signal TERM' TERM
	trap 'on_signal INT' INT
	trap 'on_signal HUP' HUP
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
	timeout -s TERM 400 "$MIGVM" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
	VM_PID=$!
	VM_PIDS+=("$VM_PID")
}

# CMD with a watchdog made of a subshell, not timeout(1): tests call it in
# loops, and in a slow nested host each process started costs a second or
# more. Its exit status is CMD's (137 when the watchdog killed it). SIGTERM
# to the test interrupts the wait at once (the clean-up ends CMD).
bounded() { # SECS CMD...
	local secs=$1 p w rc
	shift
	"$@" &
	p=$!
	(nap "$secs"; kill -KILL "$p") </dev/null >/dev/null 2>&1 &
	w=$!
	wait "$p"
	rc=$?
	kill -KILL "$w" 2>/dev/null
	wait "$w" 2>/dev/null
	return "$rc"
}

# `migvm ctl`, bounded in time.
ctl() {
	bounded 120 "$MIGVM" ctl "$@"
}

NAP_FD=
nap() { # SECS
	if [ -n "$NAP_FD" ]; then
		read -r -t "$1" -u "$NAP_FD" _
		return 0
	fi
	sleep "$1"
}

poll_until() { # SECS CMD...
	local limit=$1 t0=$SECONDS i
	shift
	for ((i = 0; i <= limit * 10; i++)); do
		"$@" && return 0
		[ $((SECONDS - t0)) -lt "$limit" ] || return 1
		nap 0.1
	done
	return 1
}

sock_answers() { # SOCK
	ctl "$1" status >/dev/null 2>&1
}

wait_sock() { # SOCK [SECS]
	local secs=${2:-120}
	poll_until "$secs" sock_answers "$1" ||
		fail "control socket $1 did not answer within $secs s"
}

status() {
	STATUS=$(ctl "$1" status) || fail "status on $1 failed"
}

field() { # KEY: its value in $STATUS (a flat JSON object), not empty
	local re="\"$1\":\"?([^,}\"]*)"
	[[ $STATUS =~ $re ]] && [ -n "${BASH_REMATCH[1]}" ] ||
		fail "no field $1 in status: $STATUS"
	echo "${BASH_REMATCH[1]}"
}

pki_ca() { # DIR
	command -v openssl >/dev/null ||
		fail "openssl is needed to make the test's certificates"
	mkdir -p "$1"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
		-keyout "$1/ca-key.pem" -out "$1/ca-cert.pem" -days 1 \
		-subj "/CN=mig test CA $RANDOM" \
		-addext basicConstraints=critical,CA:TRUE \
		-addext keyUsage=critical,keyCertSign,cRLSign \
		>>"$WORK/pki.log" 2>&1 || fail "openssl: $(tail -n 5 "$WORK/pki.log")"
}

pki_cert() { # DIR WHO SAN [EXT]: EXT, one more extension line
	local d=$1 who=$2
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
		-keyout "$d/$who-key.pem" -out "$d/$who.csr" -subj "/CN=$who" \
		>>"$WORK/pki.log" 2>&1 &&
		printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\n%s\n' "$3" \
			"${4:-}" >"$d/$who.ext" &&
		openssl x509 -req -in "$d/$who.csr" -CA "$d/ca-cert.pem" \
			-CAkey "$d/ca-key.pem" -CAcreateserial -days 1 \
			-out "$d/$who-cert.pem" -extfile "$d/$who.ext" \
			>>"$WORK/pki.log" 2>&1 ||
		fail "openssl: $(tail -n 5 "$WORK/pki.log")"
}

# PID has ended: no such process, or a zombie. A zombie must count: bash
# 5.2's `read -t` (nap) whose timer fires while bash handles a SIGCHLD leaves
# SIGCHLD blocked for good, and bash then reaps a child only when it waits
# for it, so a loop of builtins sees its ended child "alive" for as long as
# it loops (test_vm_boot's 64-vCPU wait did, for all of its 230 s).
pid_gone() { # PID
	local st
	[[ $1 =~ ^[0-9]+$ ]] || return 0
	kill -0 "$1" 2>/dev/null || return 0
	{ read -r st <"/proc/$1/stat"; } 2>/dev/null || return 0
	st=${st##*) }
	[[ $st == [ZX]* ]]
}

console_hbs() { # FILE
	local lines l
	mapfile lines <"$1"
	HBS=()
	for l in "${lines[@]}"; do
		[[ $l == "hb "*$'\n' ]] && HBS+=("${l%$'\n'}")
	done
}

console_hbs_at_least() { # FILE N
	console_hbs "$1"
	[ "${#HBS[@]}" -ge "$2" ]
}

hb_reached() { # SOCK N
	status "$1"
	[ "$(field hb_lines)" -ge "$2" ]
}

wait_hb() {
	local sock=$1 n=$2 secs=${3:-120}
	poll_until "$secs" hb_reached "$sock" "$n" ||
		fail "fewer than $n heartbeats after $secs s: $STATUS"
}

wait_exit() {
	local pid=$1 secs=$2
	poll_until "$secs" pid_gone "$pid" ||
		fail "migvm (pid $pid) still runs after $secs s"
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
