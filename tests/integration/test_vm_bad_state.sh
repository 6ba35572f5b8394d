#!/usr/bin/env bash
# Bad state files for --restore: missing, not a state file, empty,
# truncated, corrupted header / snapshot / memory (CRC32C), trailing
# garbage, a --corrupt-gpa outside RAM. Each: exit 1, a message naming the
# file and the cause, no crash, no VM left running.
here=$(dirname "$0")
source "$here/test_vm_common.sh"
vm_init "$1" "$2"
need_testguest

state=$WORK/vm.state
sock=$WORK/src.sock
start_vm src --mem 128 --control "$sock" --cmdline "touch=16M wss=4M hb=200"
wait_sock "$sock"
wait_hb "$sock" 1
ctl "$sock" save "$state" >/dev/null || fail "save failed"
wait_exit "$VM_PID" 30
[ "$RC" = 0 ] || fail "migvm exited $RC after save"
size=$(stat -c %s "$state")

expect_err() {
	local name=$1 pat=$2
	shift 2
	timeout -s KILL 60 "$MIGVM" --console "$WORK/$name.out" "$@" 2>"$WORK/$name.err"
	local rc=$?
	[ "$rc" = 1 ] || { cat "$WORK/$name.err"; fail "$name: exit $rc, expected 1"; }
	grep -q -- "$pat" "$WORK/$name.err" ||
		fail "$name: stderr lacks '$pat': $(cat "$WORK/$name.err")"
	[ -s "$WORK/$name.out" ] && fail "$name: the guest ran"
	ok "$name: $(head -n1 "$WORK/$name.err")"
}
poke() { # FILE OFFSET: flip the bits of one byte
	local f=$1 off=$2 b
	b=$(od -An -t u1 -j "$off" -N 1 "$f" | tr -d ' ')
	printf "\\x$(printf %02x $((b ^ 0xff)))" |
		dd of="$f" bs=1 seek="$off" conv=notrunc status=none
}
variant() { cp "$state" "$WORK/$1.state"; echo "$WORK/$1.state"; }

expect_err missing "state file $WORK/nope.state: No such file" --restore "$WORK/nope.state"
: >"$WORK/empty.state"
expect_err empty "truncated (ends inside the header)" --restore "$WORK/empty.state"
head -c 4096 "$TG" >"$WORK/elf.state"
expect_err not-state "not a migvm state file (bad magic)" --restore "$WORK/elf.state"
for cut in 40 1000 $((size / 2)) $((size - 1)); do
	head -c "$cut" "$state" >"$WORK/cut.state"
	expect_err "truncated-$cut" "truncated" --restore "$WORK/cut.state"
done
f=$(variant header)
poke "$f" 30
expect_err bad-header "header checksum mismatch (corrupted)" --restore "$f"
f=$(variant snapshot)
poke "$f" 200
expect_err bad-snapshot "snapshot checksum mismatch (corrupted)" --restore "$f"
f=$(variant memory)
poke "$f" $((size - 16 - 8 - 5000))
expect_err bad-memory "region 0 checksum mismatch (corrupted memory contents)" --restore "$f"
f=$(variant trailer)
poke "$f" $((size - 3))
expect_err bad-trailer "trailer is corrupted" --restore "$f"
f=$(variant garbage)
printf 'garbage' >>"$f"
expect_err trailing-garbage "trailing garbage" --restore "$f"
expect_err corrupt-outside "--corrupt-gpa 0x40000000: not guest RAM" \
	--restore "$state" --corrupt-gpa 0x40000000

# The good file still restores.
start_vm good --restore "$state" --control "$WORK/good.sock"
wait_sock "$WORK/good.sock"
ctl "$WORK/good.sock" quit >/dev/null
wait_exit "$VM_PID" 30
[ "$RC" = 0 ] || fail "good restore exited $RC"
ok "the intact state file restores"
