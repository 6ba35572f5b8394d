#!/usr/bin/env bash
# The test guest boots with 1 and 2 vCPUs (and with 64 at the end): heartbeats, timer ticks and its
# page counters go up, no page mismatches, `quit` ends it with status 0, and
# with duration= it ends itself with status 0, removing its control socket.
# Its dirty rate at rate=max is compared, side by side, with a guest that
# only verifies pages (rate=0), booted alongside with the same vCPUs and
# memory: writing a page costs it a check, a stamp and half a sweep step,
# about four verifications (0.2-0.25 of the verify rate under emulation);
# at rate=max it must write at least a tenth of the reference's verify
# rate, whatever the speed of the machine.
here=$(dirname "$0")
source "$here/test_vm_common.sh"
vm_init "$1" "$2"
need_testguest

# The console's last complete heartbeat line into HB, their count into HB_N
# (the shell's own reads: the two consoles are read within moments).
last_hb() { # FILE
	console_hbs "$1"
	HB_N=${#HBS[@]} HB=""
	[ "$HB_N" = 0 ] || HB=${HBS[HB_N - 1]}
}

# hb_rate FILE KEY LINE1 LINE2: KEY (written, verified) per guest second
# between two heartbeat lines of console FILE, and timer ticks per second
# (the guest's TSC, or its ticks where it could not calibrate the TSC).
hb_rate() {
	awk -v key="$2" -v l1="$3" -v l2="$4" '
		function val(line, k,   n, f, i) {
			n = split(line, f, " ")
			for (i = 1; i <= n; i++)
				if (index(f[i], k "=") == 1)
					return substr(f[i], length(k) + 2) + 0
			return -1
		}
		/^testguest: / { khz = val($0, "tsc_khz") }
		END {
			secs = khz > 0 ? (val(l2, "tsc") - val(l1, "tsc")) / (khz * 1000) \
				: (val(l2, "ticks") - val(l1, "ticks")) / 100
			if (secs <= 0) { print 0; exit }
			printf "%d %.1f\n", (val(l2, key) - val(l1, key)) / secs,
				(val(l2, "ticks") - val(l1, "ticks")) / secs
		}' "$1"
}

for cpus in 1 2; do
	sm=$WORK/max$cpus.sock
	sr=$WORK/ref$cpus.sock
	start_vm max$cpus --cpus "$cpus" --mem 512 --control "$sm" \
		--cmdline "touch=64M wss=16M rate=max hb=200"
	pm=$VM_PID
	start_vm ref$cpus --cpus "$cpus" --mem 512 --control "$sr" \
		--cmdline "touch=64M wss=16M rate=0 hb=200"
	pr=$VM_PID
	wait_sock "$sm"
	wait_sock "$sr"
	wait_hb "$sm" 2
	wait_hb "$sr" 2
	status "$sm"
	seq1=$(field hb_seq) ticks1=$(field ticks) w1=$(field written)
	v1=$(field verified)
	# The rates: over the same stretch of time on both, five heartbeats (a
	# second of guest time) or more, from their consoles.
	last_hb "$WORK/max$cpus.out"
	m1=$HB mn=$HB_N
	last_hb "$WORK/ref$cpus.out"
	r1=$HB rn=$HB_N
	poll_until 120 console_hbs_at_least "$WORK/max$cpus.out" $((mn + 5)) &&
		poll_until 120 console_hbs_at_least "$WORK/ref$cpus.out" $((rn + 5)) ||
		fail "$cpus vCPU(s): fewer than 5 more heartbeats in 120 s"
	last_hb "$WORK/max$cpus.out"
	m2=$HB
	last_hb "$WORK/ref$cpus.out"
	r2=$HB
	status "$sm"
	seq2=$(field hb_seq) ticks2=$(field ticks) w2=$(field written)
	v2=$(field verified)
	[ "$(field cpus)" = "$cpus" ] || fail "status says $(field cpus) vCPUs"
	[ "$(field run_state)" = running ] || fail "run_state: $STATUS"
	[ "$seq2" -gt "$seq1" ] || fail "$cpus vCPU(s): heartbeat stuck at $seq1"
	[ "$ticks2" -gt "$ticks1" ] || fail "$cpus vCPU(s): ticks stuck at $ticks1"
	[ "$w2" -gt "$w1" ] || fail "$cpus vCPU(s): written stuck at $w1"
	[ "$v2" -gt "$v1" ] || fail "$cpus vCPU(s): verified stuck at $v1"
	[ "$(field mismatches)" = 0 ] || fail "mismatches: $STATUS"
	status "$sr"
	[ "$(field cpus)" = "$cpus" ] || fail "reference: status says $(field cpus) vCPUs"
	[ "$(field written)" = 0 ] || fail "the rate=0 guest wrote pages: $STATUS"
	[ "$(field mismatches)" = 0 ] || fail "reference: mismatches: $STATUS"

	read -r rate tick_hz <<<"$(hb_rate "$WORK/max$cpus.out" written "$m1" "$m2")"
	read -r vrate _ <<<"$(hb_rate "$WORK/ref$cpus.out" verified "$r1" "$r2")"
	[ "${rate:-0}" -gt 0 ] && [ "${vrate:-0}" -gt 0 ] ||
		fail "$cpus vCPU(s): no rates from heartbeats '$m1' .. '$m2' and '$r1' .. '$r2'"
	echo "$cpus vCPU(s): dirty rate at rate=max: $rate pages/s; a rate=0 guest" \
		"alongside verifies $vrate pages/s (ratio $(awk -v a="$rate" -v b="$vrate" \
		'BEGIN { printf "%.3f", a / b }')); timer ticks: $tick_hz /s;" \
		"heartbeats $seq1 -> $seq2"
	[ $((rate * 10)) -ge "$vrate" ] ||
		fail "$cpus vCPU(s): dirty rate $rate pages/s at rate=max, under a tenth of the $vrate pages/s a guest verifies alongside"

	for s in "$sm" "$sr"; do
		ctl "$s" quit >/dev/null || fail "quit on $s failed"
	done
	wait_exit "$pm" 120
	[ "$RC" = 0 ] || fail "$cpus vCPU(s): migvm exited $RC after quit, expected 0"
	wait_exit "$pr" 120
	[ "$RC" = 0 ] || fail "$cpus vCPU(s): reference migvm exited $RC after quit"
	for f in max ref; do
		grep -q "MISMATCH" "$WORK/$f$cpus.out" && fail "the guest ($f) reported a MISMATCH"
	done
	[ -e "$sm" ] && fail "control socket $sm left behind"

	# The guest ends itself after duration= (counted from its `ready`).
	ss=$WORK/self$cpus.sock
	start_vm self$cpus --cpus "$cpus" --mem 512 --control "$ss" \
		--cmdline "touch=64M wss=16M rate=max hb=200 duration=3"
	pself=$VM_PID
	wait_exit "$pself" 230 # it runs under a 240 s timeout(1) (start_vm)
	[ "$RC" = 0 ] || fail "$cpus vCPU(s): migvm exited $RC, expected 0"
	out=$WORK/self$cpus.out
	grep -q "MISMATCH" "$out" && fail "the guest reported a MISMATCH"
	grep -q "^done .*mismatches=0 status=0" "$out" ||
		fail "no clean 'done' line: $(tail -n 3 "$out")"
	n=$(grep -c '^hb ' "$out")
	[ "$n" -ge 3 ] || fail "only $n heartbeat lines in 3 s of guest time"
	grep -q "mismatches=[1-9]" "$out" && fail "a heartbeat counted mismatches"
	awk '/^hb / { split($2, a, "="); split($4, w, "=")
		if (n++ && (a[2] + 0 <= s || w[2] + 0 <= wr)) bad = 1
		s = a[2] + 0; wr = w[2] + 0 }
		END { exit bad }' "$out" ||
		fail "heartbeat sequence or written count did not go up: $(grep '^hb ' "$out")"
	[ -e "$ss" ] && fail "control socket $ss left behind"
	ok "$cpus vCPU(s): $n heartbeats, ended itself with 0"
done

# The most vCPUs migvm takes (64): all of them start and run the workload
# (the MP table that lists them for guests without ACPI must fit too).
start_vm big --cpus 64 --mem 256 --cmdline "cpus=64 touch=4M wss=2M hb=300 duration=2"
if ! poll_until 230 pid_gone "$VM_PID"; then
	where_stuck "$VM_PID" >&2
	fail "64 vCPUs: migvm still runs after 230 s; its console: $(tail -n 4 "$WORK/big.out"); $(grep -c '^cpu ' "$WORK/big.out") CPUs reported"
fi
wait_exit "$VM_PID" 10
[ "$RC" = 0 ] || fail "64 vCPUs: migvm exited $RC: $(tail -n 3 "$WORK/big.err" 2>/dev/null)"
grep -q "^ready .*" "$WORK/big.out" && grep -q "^done .*mismatches=0 status=0" "$WORK/big.out" ||
	fail "64 vCPUs: no clean run: $(tail -n 3 "$WORK/big.out")"
[ "$(grep -c '^cpu ' "$WORK/big.out")" = 64 ] ||
	fail "64 vCPUs: $(grep -c '^cpu ' "$WORK/big.out") CPUs took a share of the work"
ok "64 vCPUs: the guest ran on all of them and ended itself with 0"
