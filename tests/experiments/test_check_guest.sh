#!/usr/bin/env bash
# migbench.check_guest(), the guest_ok rule of every study: heartbeats that
# come after the watch's first seconds (a slow machine) still count, within
# its patience; none at all, a MISMATCH, or a dead VMM fail it. Pure: a
# console file written by a background writer, no VM.
here=$(dirname "$0")
source "$here/../integration/test_vm_common.sh"
vm_init "${1:-$here/../../build}" "${2:-$here/../..}" nokvm
SRC=$(cd "${2:-$here/../..}" && pwd)
python3 - "$SRC/experiments/lib" "$WORK" <<'PY' || fail "check_guest"
import os, sys, threading, time
sys.path.insert(0, sys.argv[1])
import migbench as mb
work = sys.argv[2]

def hb(seq, ticks, mm=0):
    return "hb seq=%d ticks=%d written=1 verified=1 mismatches=%d pass=1\n" % (seq, ticks, mm)

def run(name, lines, delay, **kw):
    """Write LINES to a fresh console DELAY s after the watch begins."""
    path = os.path.join(work, name)
    open(path, "w").close()
    con = mb.Console(path)
    def writer():
        time.sleep(delay)
        with open(path, "a") as f:
            for l in lines:
                f.write(l)
                f.flush()
                time.sleep(0.05)
    t = threading.Thread(target=writer)
    t.start()
    g = mb.check_guest(con, **kw)
    t.join()
    return g

# Late heartbeats (after `seconds`, within `patience`): ok, and the watch
# said how long it ran.
g = run("late", [hb(5, 50), hb(6, 60)], 1.5, seconds=0.5, patience=10)
assert g["guest_ok"] and g["heartbeats"] == 2 and 1.5 <= g["seconds"] < 10, g
# On time: the watch ends at `seconds`, not at its patience.
t = time.monotonic()
g = run("prompt", [hb(1, 10), hb(2, 20), hb(3, 30)], 0, seconds=1.0, patience=30)
assert g["guest_ok"] and time.monotonic() - t < 5, g
# No heartbeat within the patience: not ok, and why.
g = run("silent", [], 0, seconds=0.3, patience=1.0)
assert not g["guest_ok"] and "0 heartbeats" in g["why"], g
# A mismatch, counted or reported: not ok.
g = run("counted", [hb(1, 10), hb(2, 20, mm=3)], 0, seconds=0.5, patience=5)
assert not g["guest_ok"] and "mismatches=3" in g["why"], g
g = run("line", [hb(1, 10), "MISMATCH page=7 expected=2 got=1\n", hb(2, 20)], 0,
        seconds=0.5, patience=5)
assert not g["guest_ok"] and "MISMATCH" in g["why"], g
# Ticks that stop: not ok.
g = run("stuck", [hb(1, 10), hb(2, 10)], 0, seconds=0.5, patience=5)
assert not g["guest_ok"] and "ticks did not increase" in g["why"], g
# The VMM died: not ok at once, whatever the patience.
t = time.monotonic()
g = run("dead", [], 0, seconds=0.3, patience=30, alive=lambda: False)
assert not g["guest_ok"] and "exited" in g["why"] and time.monotonic() - t < 5, g
print("ok: check_guest: late heartbeats count, silence, mismatches, stopped ticks and a dead VMM fail")
PY
ok "check_guest judges liveness within its patience"
