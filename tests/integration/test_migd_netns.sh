#!/usr/bin/env bash
# Two hosts on one machine: two network namespaces joined by a veth pair
# (192.0.2.1/24 and 192.0.2.2/24, TEST-NET-1, addresses that exist only
# inside the namespaces this test makes: parallel runs do not clash), a
# migd in each. A test-guest VM started on
# A moves to B over the veth with `migctl migrate` and keeps running with
# no mismatch; then `tc` shapes the link to 1 Gbit/s on both ends and the
# VM moves back B -> A: the migration succeeds and the throughput it
# reports (bytes / duration of its rounds) is consistent with the link.
# Last, the link goes down in the middle of a pre-copy A -> B: the source
# gives up (nothing moves for stall_timeout_ms), resumes the VM and says
# why; B drops its incoming VM once the source goes silent; with the link
# up again the same migration succeeds.
# Skipped (77) without /dev/kvm or when `ip netns add` is not permitted.
here=$(dirname "$0")
source "$here/test_vm_common.sh"
# shellcheck source=migd_common.sh
source "$here/migd_common.sh"
vm_init "${1:-$here/../../build}" "${2:-$here/../..}"
need_testguest
MIGD=$BUILD/daemon/migd
MIGCTL=$BUILD/daemon/migctl
[ -x "$MIGD" ] && [ -x "$MIGCTL" ] || fail "migd/migctl not built"
command -v ip >/dev/null && command -v tc >/dev/null || {
	echo "skip: ip/tc (iproute2) are not installed"
	exit 77
}

NS_A=migA$$
NS_B=migB$$
VETH_A=mgva$$ # in NS_A
VETH_B=mgvb$$ # in NS_B
IP_A=192.0.2.1
IP_B=192.0.2.2
NS_MADE=()

cleanup_netns() {
	local n
	end_daemons
	# Deleting a namespace removes the veth end in it, and so its peer.
	for n in "${NS_MADE[@]}"; do
		ip netns exec "$n" ip link del "$VETH_A" 2>/dev/null
		ip netns del "$n" 2>/dev/null
	done
	cleanup
}
trap cleanup_netns EXIT
# Every wait is bounded, and so is the whole test (SIGTERM, SIGINT: a
# failure, cleaned up like any other exit).
test_deadline 270 # CTest gives it 300 s (600 in a nested host)

# As in test_migd.sh: the guest rewrites 500 pages/s, sleeping in between;
# the migrations here are about the link and the daemons, not throttling.
GUEST="touch=32M wss=8M rate=500 idle=halt hb=300"
TOUCH_MIB=32

if ! ip netns add "$NS_A" 2>"$WORK/netns.err"; then
	echo "skip: ip netns add is not permitted: $(cat "$WORK/netns.err")"
	exit 77
fi
NS_MADE+=("$NS_A")
ip netns add "$NS_B" || fail "ip netns add $NS_B"
NS_MADE+=("$NS_B")
ip link add "$VETH_A" netns "$NS_A" type veth peer name "$VETH_B" netns "$NS_B" ||
	fail "cannot make the veth pair"
ip -n "$NS_A" addr add "$IP_A/24" dev "$VETH_A" || fail "address on A"
ip -n "$NS_B" addr add "$IP_B/24" dev "$VETH_B" || fail "address on B"
for n in "$NS_A" "$NS_B"; do
	ip -n "$n" link set lo up || fail "lo up in $n"
done
ip -n "$NS_A" link set "$VETH_A" up || fail "veth up on A"
ip -n "$NS_B" link set "$VETH_B" up || fail "veth up on B"
ok "namespaces $NS_A ($IP_A) and $NS_B ($IP_B) joined by $VETH_A/$VETH_B"

# start_migd NAME NS IP: a migd in NS listening on IP:7400 (its own
# namespace, so the port is free); control socket and state in $WORK.
start_migd() {
	local name=$1 ns=$2 ip=$3
	: >"$WORK/migd-$name.err" # no earlier "ready" (see test_migd.sh)
	# Not under timeout(1): $! must be migd itself (ip netns exec execs it).
	ip netns exec "$ns" "$MIGD" --state-dir "$WORK/$name" \
		--control "$WORK/$name.sock" --listen "$ip:7400" \
		--psk-file "$WORK/psk" --log-level debug \
		>"$WORK/migd-$name.out" 2>"$WORK/migd-$name.err" &
	D_PIDS+=($!)
	wait_migd_ready "$name" "$!" ||
		fail "migd $name did not start: $(cat "$WORK/migd-$name.err")"
}

# check_runs_on HOST: vm1 runs there, beats, no mismatch. The counts come
# from a status that has the guest's (migd leaves them out, zero, when its
# migvm does not answer it in time).
check_runs_on() {
	local s
	s=$(mc "$1" --json status vm1) || fail "vm1 not on $1: $s"
	[ "$(jfield "$s" state)" = running ] || fail "$1 says $s"
	wait_vm_hb "$1" vm1 1
	wait_vm_hb "$1" vm1 $(($(jfield "$S" hb_lines) + 2))
	[ "$(jfield "$S" mismatches)" = 0 ] || fail "mismatch on $1: $S"
	grep -q MISMATCH "$WORK/$1/vm1.console" && fail "MISMATCH on $1's console"
	return 0
}

# throughput JSON [LIMIT]: prints "GBIT ROUND1_GBIT" (wire bytes / round
# time, all rounds and the first), the details on stderr, and fails above
# LIMIT Gbit/s (if LIMIT is given). (awk, not python: starting python takes
# up to a minute in a loaded nested host.) In migctl's JSON, "per_round" is
# the last_result's; its records hold no nested object.
throughput() {
	local out rc
	out=$(awk -v lim="${2:-}" '
		function get(str, key,   re) {
			re = "\"" key "\":-?[0-9.eE+]+"
			if (!match(str, re))
				return ""
			return substr(str, RSTART + length(key) + 3, RLENGTH - length(key) - 3) + 0
		}
		{ s = s $0 }
		END {
			lr = substr(s, index(s, "\"last_result\":{"))
			if (index(s, "\"last_result\":{") == 0 || index(lr, "\"status\":\"ok\"") == 0) {
				print "no ok last_result"; exit 1
			}
			rounds = get(lr, "rounds")
			i = index(lr, "\"per_round\":[")
			n = split(substr(lr, i + 13), recs, "}")
			for (k = 1; k <= n; k++) {
				if (get(recs[k], "round") == "")
					continue
				nr++
				B[nr] = get(recs[k], "bytes"); D[nr] = get(recs[k], "duration_ms")
				T[nr] = get(recs[k], "throughput")
				b += B[nr]; t += D[nr] / 1e3
			}
			if (!i || rounds < 1 || nr != rounds || b <= 0 || t <= 0 || D[1] <= 0) {
				print "bad per_round: " nr " of " rounds " rounds, " b " bytes, " t " s"
				exit 1
			}
			agg = b * 8 / t / 1e9
			first = B[1] * 8 / (D[1] / 1e3) / 1e9
			rep = ""
			for (k = 1; k <= nr; k++)
				rep = rep (k > 1 ? ", " : "") sprintf("%.3f", T[k] * 8 / 1e9)
			printf "%.3f %.3f\n", agg, first
			printf "  %d rounds, %.1f MiB on the wire in %.3f s: %.3f Gbit/s; round 1: %.3f Gbit/s; reported per round: %s Gbit/s; downtime %.1f ms, total %.1f ms\n", \
				rounds, b / 1048576, t, agg, first, rep, get(lr, "downtime_ms"), get(lr, "total_time_ms")
			if (lim == "")
				exit 0
			# A single round counts bytes as written to the socket, a few
			# MiB of which may still sit in socket buffers when it ends
			# (the last rounds are short): rounds of 8 MiB or more get 20%
			# more headroom. The stop-and-copy round is left out: it ends
			# once its bytes are in the sockets, and two connections
			# buffers can hold most of a 16 MiB set.
			bad = ""
			for (k = 1; k < nr; k++)
				if (B[k] >= 8 * 1048576 && T[k] * 8 / 1e9 > lim * 1.2)
					bad = bad " " k
			if (agg > lim || bad != "") {
				printf "throughput above %.2f Gbit/s: %.3f, rounds%s\n", lim, agg, bad
				exit 1
			}
		}' <<<"$1")
	rc=$?
	if [ "$rc" = 0 ]; then
		echo "${out%%$'\n'*}"
		printf '%s\n' "${out#*$'\n'}" >&2
	else
		printf '%s\n' "$out" >&2
	fi
	return "$rc"
}

head -c 32 /dev/urandom | base64 >"$WORK/psk"
chmod 600 "$WORK/psk"
start_migd a "$NS_A" "$IP_A"
start_migd b "$NS_B" "$IP_B"
reach() { # reach NS IP: a TCP connection to IP:7400 from NS
	ip netns exec "$1" timeout 10 bash -c 'exec 3<>"/dev/tcp/$0/7400"' "$2"
}
reach "$NS_A" "$IP_B" || fail "A cannot reach B's migd over the veth"
reach "$NS_B" "$IP_A" || fail "B cannot reach A's migd over the veth"

mc a start vm1 --mem 512 --cpus 1 --cmdline "$GUEST" >/dev/null ||
	fail "start vm1"
wait_vm_hb a vm1 2
ok "vm1 runs on A"

# A -> B over the unshaped veth.
mc_to "$WORK/res" a --json migrate vm1 --to "$IP_B:7400"
res=$(<"$WORK/res")
[ "$MC_RC" = 0 ] || fail "migrate A->B: $res"
[ "$(jfield "$res" state)" = migrated ] || fail "A says $res"
t=$(throughput "$res" 2>"$WORK/tput1") || { cat "$WORK/tput1"; fail "bad result: $res"; }
cat "$WORK/tput1"
g_free=${t%% *}
check_runs_on b
grep -q "vm1 *migrated" <<<"$(mc a list)" || fail "A does not list vm1 as migrated"
ok "vm1 moved to B over the veth ($g_free Gbit/s) and keeps running"

# Shape the link: 1 Gbit/s each way.
ip netns exec "$NS_A" tc qdisc add dev "$VETH_A" root tbf rate 1gbit burst 256k latency 50ms ||
	fail "tc on A"
ip netns exec "$NS_B" tc qdisc add dev "$VETH_B" root tbf rate 1gbit burst 256k latency 50ms ||
	fail "tc on B"
grep -q "tbf.*rate 1Gbit" <<<"$(ip netns exec "$NS_B" tc qdisc show dev "$VETH_B")" ||
	fail "tbf not in place: $(ip netns exec "$NS_B" tc qdisc show dev "$VETH_B")"
ok "link shaped to 1 Gbit/s"

# B -> A at 1 Gbit/s.
mc_to "$WORK/res" b --json migrate vm1 --to "$IP_A:7400"
res=$(<"$WORK/res")
[ "$MC_RC" = 0 ] || fail "migrate B->A: $res"
[ "$(jfield "$res" state)" = migrated ] || fail "B says $res"
t=$(throughput "$res" 1.25 2>"$WORK/tput2")
rc=$?
cat "$WORK/tput2"
g_shaped=${t%% *}
[ "$rc" = 0 ] && [ -n "$g_shaped" ] || fail "throughput not consistent with a 1 Gbit/s link: $res"
# the tbf counters saw the migration
# the tbf on B's end carried the migration (and says whether it held it back)
sent=$(ip netns exec "$NS_B" tc -s qdisc show dev "$VETH_B" | grep -o 'Sent [0-9]* bytes.*' | head -1)
[ "$(awk '{print $2}' <<<"$sent")" -ge $((TOUCH_MIB << 20)) ] 2>/dev/null ||
	fail "the tbf on B did not carry the migration: $sent"
check_runs_on a
grep -q "vm1 *migrated" <<<"$(mc b list)" || fail "B does not list vm1 as migrated"
ok "and back to A at 1 Gbit/s: $g_shaped Gbit/s measured (unshaped: $g_free); tbf on B: $sent"

# The link goes down mid pre-copy: at 1 MiB/s the 32 MiB the guest touched
# take 32 s or more, however fast the machine; the link goes down once
# 1000 pages are across.
mc a --json migrate vm1 --to "$IP_B:7400" --max-bandwidth 1M --no-wait >/dev/null ||
	fail "migrate A->B did not start"
sent_some() {
	S=$(mc a --json status vm1) || return 1
	[ "$(jfield "$S" progress.pages_sent)" -gt 1000 ] 2>/dev/null
}
poll_until 120 sent_some || fail "no pre-copy progress: $S"
[ "$(jfield "$S" progress.phase)" = precopy ] || fail "not in pre-copy: $S"
ip -n "$NS_B" link set "$VETH_B" down || fail "link down"
ok "link down during pre-copy"
# The source gives up after stall_timeout_ms (10 s) without progress; the
# release to B then waits for its own timeouts (10 s more). The daemons'
# own connection, idle through the pre-copy, may be found dead first (its
# keepalive probes began before the link went down): on a slow machine
# either reason can come first, and both say why.
wait_vm_state a vm1 120 running exited migrated
s=$S
[ "$(jfield "$s" state)" = running ] || fail "vm1 not running on A after the link went down: $s"
grep -Eq "no progress on the connection|the destination daemon went away" <<<"$(jfield "$s" last_error)" ||
	fail "status does not say why: $s"
check_runs_on a
ok "A resumed vm1: $(jfield "$s" last_error)"
# B's incoming migvm gives up after 30 s of silence.
b_released() {
	S=$(mc b --json status vm1 2>/dev/null) || return 0 # no record left
	[ "$(jfield "$S" state)" != incoming ]
}
poll_until 120 b_released || fail "B still holds the reservation after 120 s: $S"
s=$S
out=$(mc b --json list) || fail "list on B failed: $out"
grep -q '"state":"incoming"' <<<"$out" && fail "B lists an incoming VM: $out"
ok "B released it: $(jfield "$s" last_error)"
ip -n "$NS_B" link set "$VETH_B" up || fail "link up"
# While the link was down A's neighbour entry for B failed; until it is
# resolved again a connect can fail at once (EHOSTUNREACH): retry, bounded.
poll_until 60 reach "$NS_A" "$IP_B" 2>/dev/null ||
	fail "A cannot reach B again (60 s after the link came up)"
mc_to "$WORK/res" a --json migrate vm1 --to "$IP_B:7400"
res=$(<"$WORK/res")
[ "$MC_RC" = 0 ] || fail "migrate A->B after the link came back: $res"
[ "$(jfield "$res" state)" = migrated ] || fail "A says $res"
check_runs_on b
ok "with the link up again vm1 moves to B"
out=$(mc a --json list) || fail "list on A failed: $out"
grep -q '"state":"incoming"' <<<"$out" && fail "A still holds an incoming record"

mc b stop vm1 >/dev/null || fail "stop"
wait_vm_state b vm1 120 exited
ok "stopped"
