#!/usr/bin/env bash
# Helpers for the migd tests (test_migd*.sh), on top of test_vm_common.sh:
#   mc HOST ARGS...           migctl on HOST's control socket, bounded
#                             (120 s; 250 s for a `migrate` that waits)
#   mc_to FILE HOST ARGS...   mc with its output in FILE and its exit
#                             status in MC_RC
#   jfield JSON KEY           a field of migctl's JSON for a VM: a top-level
#                             one, or progress.KEY (no process started)
#   vm_state HOST NAME        NAME's state on HOST (status into $S)
#   wait_vm_hb HOST NAME N    wait until NAME on HOST has shown N heartbeats
#   wait_vm_state HOST NAME SECS STATE...  wait until NAME's state on HOST is
#                             one of STATEs; its status in $S
#   wait_migd_ready HOST PID  wait until migd HOST (PID, started with its
#                             stderr in $WORK/migd-HOST.err) listens on both
#                             ports; false if it ended (its reason is in
#                             that file)
#   pick_port                 a TCP port nothing uses, out of the ephemeral
#                             range, in PORT (a migd that finds it taken
#                             after all fails to start: try again)
#   start_migd NAME PSK [ARGS...]  start migd NAME on loopback with its state
#                             dir, socket and logs in $WORK; PORT_NAME and
#                             PID_NAME (PSK "": no --psk-file, ARGS say how
#                             peers authenticate; the array MIGD_WRAP, if
#                             set, prefixes migd's command: it must exec it)
#   migd_pki DIR CADIR WHO SAN [EXT]  a --tls-x509-dir DIR whose one
#                             certificate (WHO, for SAN, signed by CADIR's
#                             CA: pki_ca; EXT as pki_cert's) is shown as
#                             server and as client
#   fake_migvm FILE           a stand-in for migvm, no KVM needed: a VM
#                             started runs (sleeps); an incoming one
#                             announces port 4444 (its event) and waits,
#                             its TLS key kept in key.got beside FILE
#   check_result JSON         a committed migration with consistent figures
#                             (summary in $RESULT)
#   migd_init                 MIGD and MIGCTL of $BUILD (after vm_init),
#                             and an EXIT trap that ends the daemons, their
#                             VMs and the work dir
#   end_daemons               end the daemons in D_PIDS and the migvm of
#                             every VM in their state dirs ($WORK/*/*.pid:
#                             they outlive their daemon by design), TERM
#                             then KILL; for the tests' EXIT traps
# Bounds are in seconds, for a stuck test only: none assumes a speed.

mc() { # mc HOST ARGS...
	local h=$1 secs=120
	shift
	# A `migrate` that waits polls until the migration ends.
	[[ " $* " == *" migrate "* && " $* " != *" --no-wait "* ]] && secs=250
	bounded "$secs" "$MIGCTL" --socket "$WORK/$h.sock" "$@"
}

# In the test's own shell, not in $(...): SIGTERM ends the test at once,
# even in the middle of a migration.
mc_to() { # mc_to FILE HOST ARGS...
	local out=$1
	shift
	mc "$@" >"$out" 2>&1
	MC_RC=$?
}

# migctl prints a VM's top-level fields first, then "progress" (while it
# migrates), then "last_result" (the migvm's own JSON): the first "KEY":
# in the text is the top-level one. A string's quotes are escaped inside
# another string, so "KEY": never matches inside one.
jfield() { # jfield JSON KEY|progress.KEY
	local j=$1 k=$2 re
	if [[ $k == progress.* ]]; then
		[[ $j == *'"progress":{'* ]] || return 0
		j=${j#*\"progress\":\{}
		j=${j%%\}*}
		k=${k#progress.}
	fi
	re="\"$k\":(\"((\\\\.|[^\"\\\\])*)\"|([^,}]*))"
	[[ $j =~ $re ]] || return 0
	if [ -n "${BASH_REMATCH[4]}" ]; then
		[ "${BASH_REMATCH[4]}" = null ] || echo "${BASH_REMATCH[4]}"
	else
		printf '%b\n' "${BASH_REMATCH[2]//\\\"/\"}"
	fi
}

vm_state() { # vm_state HOST NAME: prints the state, $S holds the status
	S=$(mc "$1" --json status "$2") || return 1
	jfield "$S" state
}

vm_hb_at_least() { # HOST NAME N
	local s
	s=$(mc "$1" --json status "$2") || fail "status $2 on $1: $s"
	S=$s
	[ "$(jfield "$s" hb_lines)" -ge "$3" ] 2>/dev/null
}

wait_vm_hb() { # wait_vm_hb HOST NAME N
	S=
	poll_until 120 vm_hb_at_least "$1" "$2" "$3" ||
		fail "$2 on $1: fewer than $3 heartbeats after 120 s: $S"
}

wait_vm_state() { # wait_vm_state HOST NAME SECS STATE...
	local h=$1 n=$2 secs=$3
	shift 3
	S=
	poll_until "$secs" vm_state_in "$h" "$n" "$@" ||
		fail "$n on $h: not $* after $secs s: $S"
}

vm_state_in() { # HOST NAME STATE...: like vm_state_is, keeping $S
	local h=$1 n=$2 st want
	shift 2
	S=$(mc "$h" --json status "$n") || return 1
	st=$(jfield "$S" state)
	for want in "$@"; do
		[ "$st" = "$want" ] && return 0
	done
	return 1
}

migd_ready() { # HOST PID
	local log
	! pid_gone "$2" || return 2
	[ -S "$WORK/$1.sock" ] || return 1
	mapfile -t log <"$WORK/migd-$1.err" 2>/dev/null
	[[ "${log[*]}" == *"ready:"* ]]
}

wait_migd_ready() { # wait_migd_ready HOST PID
	# migd logs "ready" once its control socket and its peer port are both
	# up; the control socket alone appears first.
	local t0=$SECONDS r i
	for ((i = 0; i <= 1200 && SECONDS - t0 <= 120; i++)); do
		migd_ready "$1" "$2"
		r=$?
		[ "$r" = 0 ] && return 0
		[ "$r" = 2 ] && return 1
		nap 0.1
	done
	fail "migd $1 did not get ready in 120 s"
}

pick_port() { # sets PORT
	local t4 t6 i hex
	mapfile -t t4 </proc/net/tcp
	mapfile -t t6 </proc/net/tcp6 2>/dev/null
	for ((i = 0; i < 100; i++)); do
		PORT=$((20000 + RANDOM % 12000))
		printf -v hex '%04X' "$PORT"
		[[ "${t4[*]} ${t6[*]}" == *":$hex "* ]] || return 0
	done
	fail "no free port found"
}

migd_init() {
	MIGD=$BUILD/daemon/migd
	MIGCTL=$BUILD/daemon/migctl
	[ -x "$MIGD" ] && [ -x "$MIGCTL" ] || fail "migd/migctl not built"
	trap 'end_daemons; cleanup' EXIT
}

D_PIDS=()
MIGD_WRAP=()
end_daemons() {
	local p f pids=()
	for p in "${D_PIDS[@]}"; do pids+=("$p"); done
	for f in "$WORK"/*/*.pid; do
		[ -f "$f" ] && read -r p <"$f" && [[ $p =~ ^[0-9]+$ ]] && pids+=("$p")
	done
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
	for p in "${pids[@]}"; do
		poll_until 10 pid_gone "$p"
		kill -KILL "$p" 2>/dev/null
	done
}

# start_migd NAME PSKFILE [ARGS...]: sets PORT_<NAME> and PID_<NAME>
start_migd() {
	local name=$1 port pid auth=()
	[ -n "$2" ] && auth=(--psk-file "$2")
	shift 2
	for _ in 1 2 3 4 5; do
		pick_port
		port=$PORT
		# An earlier migd of this name said "ready" in this log: it is
		# emptied here, not by the redirection below, which happens in
		# the child, maybe after wait_migd_ready has read the old one.
		: >"$WORK/migd-$name.err"
		# Not under timeout(1): $! must be migd itself (the test kills it).
		# MIGD_WRAP: a command that ends in exec'ing its arguments (a
		# namespace, say), so $! is still migd.
		"${MIGD_WRAP[@]}" "$MIGD" --state-dir "$WORK/$name" \
			--control "$WORK/$name.sock" --listen "127.0.0.1:$port" \
			"${auth[@]}" --log-level debug "$@" \
			>"$WORK/migd-$name.out" 2>"$WORK/migd-$name.err" &
		pid=$!
		D_PIDS+=("$pid")
		if wait_migd_ready "$name" "$pid"; then
			eval "PORT_$name=$port PID_$name=$pid"
			return 0
		fi
		wait "$pid" 2>/dev/null
		# Taken since pick_port looked (another test, say): another one.
		grep -qi "address already in use" "$WORK/migd-$name.err" || break
	done
	fail "migd $name did not start: $(cat "$WORK/migd-$name.err")"
}

# check_result JSON: a migration that committed, with consistent figures
# (migctl's JSON: the VM's last_result is the only object with these
# keys); a summary in $RESULT.
check_result() {
	local st rounds dt tt
	st=$(jfield "$1" status) rounds=$(jfield "$1" rounds)
	dt=$(jfield "$1" downtime_ms) tt=$(jfield "$1" total_time_ms)
	[ "$st" = ok ] && [ "$rounds" -ge 1 ] 2>/dev/null &&
		awk -v d="$dt" -v t="$tt" 'BEGIN { exit !(d > 0 && d < t) }' ||
		fail "bad result: $1"
	RESULT="downtime $dt ms, total $tt ms, $rounds rounds"
}

fake_migvm() { # FILE
	cat >"$1" <<'SH'
#!/bin/bash
# A VM started here (no --incoming): it just runs, as far as migd sees.
[[ " $* " == *" --incoming "* ]] || exec sleep 200
# An incoming migvm as far as a reservation goes: its port as an event
# (VmEvent{incoming_port: 4444}, framed, on --events-fd 4), then waiting.
# Before it, stderr lines that once steered migd (and that a guest's
# console or a peer's reason could forge): they must not.
[[ " $* " == *" --events-fd 4 "* ]] || { echo "no --events-fd 4: $*" >&2; exit 2; }
[[ " $* " == *" --tls-psk-file /dev/fd/5 --tls-identity migd "* ]] ||
	{ echo "no --tls-psk-file /dev/fd/5: $*" >&2; exit 2; }
# the migration's own key: kept for the test to compare with the Reply's
head -c 1000 /dev/fd/5 >"$(dirname "$0")/key.got"
echo "migvm: incoming migration on port 5555" >&2
echo "migvm: incoming migration done; the VM runs here" >&2
sleep 0.5
printf '\x03\x00\x00\x00\x08\xdc\x22' >&4
exec sleep 200
SH
	chmod +x "$1"
}

migd_pki() { # DIR CADIR WHO SAN [EXT]
	local d=$1 ca=$2 side
	pki_cert "$ca" "$3" "$4" "${5:-}"
	mkdir -p "$d"
	cp "$ca/ca-cert.pem" "$d/"
	for side in server client; do
		cp "$ca/$3-cert.pem" "$d/$side-cert.pem"
		cp "$ca/$3-key.pem" "$d/$side-key.pem"
	done
}
