#!/usr/bin/env bash
# Run one side of the migration benchmark (lib/qemu_migrate.py or
# lib/migvm_migrate.py, named by $1 without .py) the same way for both:
#  - in a private network namespace (as root, when `unshare -n` works; set
#    MIGBENCH_NETNS=off to skip) so the loopback byte count is this
#    migration's only, and ports cannot clash with anything else;
#  - with a temporary directory (consoles, sockets, logs) that is removed on
#    exit, and a trap that kills the VMM processes it started (their pids
#    are in $workdir/pids), whatever happens to the Python side.
# Exit status: the Python side's (0 completed and the guest runs correctly
# on the destination, 1 otherwise, 2 for bad options).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
py=(python3 "$here/$1.py")
shift

for arg in "$@"; do
    if [[ $arg == -h || $arg == --help ]]; then
        exec "${py[@]}" --help
    fi
done

workdir=$(mktemp -d "${TMPDIR:-/tmp}/$(basename "${py[1]}" .py).XXXXXX")
child=

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM HUP
    if [[ -n $child ]] && kill -0 "$child" 2>/dev/null; then
        kill -TERM "$child" 2>/dev/null || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 "$child" 2>/dev/null || break
            sleep 0.5
        done
        kill -KILL "$child" 2>/dev/null || true
    fi
    # Only the VMMs this run started: their pid is in our pid file and their
    # command line names our work directory.
    if [[ -f $workdir/pids ]]; then
        while read -r pid; do
            if grep -qF "$workdir" "/proc/$pid/cmdline" 2>/dev/null; then
                kill -KILL "$pid" 2>/dev/null || true
            fi
        done <"$workdir/pids"
    fi
    # MIGBENCH_KEEP=DIR keeps the run's logs and consoles (for diagnosis).
    if [[ -n ${MIGBENCH_KEEP:-} ]]; then
        mkdir -p -- "$MIGBENCH_KEEP" && cp -r -- "$workdir"/. "$MIGBENCH_KEEP"/ 2>/dev/null || true
    fi
    rm -rf -- "$workdir"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

if [[ ${MIGBENCH_NETNS:-auto} != off && $(id -u) == 0 ]] && unshare -n true 2>/dev/null; then
    # unshare execs (no fork), so $! is the Python process itself.
    # MIGBENCH_SHAPE: tc tbf arguments for this namespace's loopback (the
    # bandwidth study), e.g. "rate 1000000000bit burst 1250000 latency 200ms".
    MIGBENCH_NETNS=private unshare -n -- \
        bash -c 'ip link set lo up 2>/dev/null || true
            if [[ -n ${MIGBENCH_SHAPE:-} ]]; then
                # shellcheck disable=SC2086
                tc qdisc add dev lo root tbf $MIGBENCH_SHAPE || {
                    echo "run_side: tc tbf $MIGBENCH_SHAPE on lo failed" >&2; exit 2; }
            fi
            exec "$@"' _ \
        "${py[@]}" --workdir "$workdir" "$@" &
elif [[ -n ${MIGBENCH_SHAPE:-} ]]; then
    echo "run_side: MIGBENCH_SHAPE needs a private network namespace (root, unshare -n)" >&2
    exit 2
else
    "${py[@]}" --workdir "$workdir" "$@" &
fi
child=$!
# `wait` returns early on a trapped signal, so the trap runs at once.
rc=0
wait "$child" || rc=$?
child=
exit "$rc"
