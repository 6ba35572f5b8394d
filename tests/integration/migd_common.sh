#!/usr/bin/env bash
# Helpers for the migd tests (test_migd*.sh), on top of test_vm_common.sh:
#   mc HOST ARGS...           migctl on HOST's control socket, with a timeout
#   jfield JSON KEY           a top-level field of a JSON object
#   wait_vm_hb HOST NAME N    wait until NAME on HOST has shown N heartbeats
#   wait_migd_ready HOST      wait until migd HOST (started with its stderr
#                             in $WORK/migd-HOST.err) listens on both ports

mc() { # mc HOST ARGS...
	local h=$1
	shift
	timeout -s KILL 120 "$MIGCTL" --socket "$WORK/$h.sock" "$@"
}

jfield() { # jfield JSON KEY (top-level string or number)
	python3 -c 'import json,sys; v=json.loads(sys.argv[1]); print(v.get(sys.argv[2]))' "$1" "$2"
}

wait_vm_hb() { # wait_vm_hb HOST NAME N
	local s
	for _ in $(seq 300); do
		s=$(mc "$1" --json status "$2") || fail "status $2 on $1: $s"
		[ "$(jfield "$s" hb_lines)" -ge "$3" ] 2>/dev/null && return 0
		sleep 0.1
	done
	fail "$2 on $1: fewer than $3 heartbeats: $s"
}

wait_migd_ready() { # wait_migd_ready HOST
	# migd logs "ready" once its control socket and its peer port are both
	# up; the control socket alone appears first.
	for _ in $(seq 100); do
		grep -q "ready:" "$WORK/migd-$1.err" && [ -S "$WORK/$1.sock" ] &&
			return 0
		sleep 0.05
	done
	fail "migd $1 did not start"
}
