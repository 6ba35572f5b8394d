#!/usr/bin/env bash
# Two hosts on one machine: two network namespaces joined by a veth pair
# (10.77.X.1/24 and 10.77.X.2/24, addresses that exist only inside the
# namespaces this test makes), a migd in each. A test-guest VM started on
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
NET=10.77.$(($$ % 250 + 1))
IP_A=$NET.1
IP_B=$NET.2
NS_MADE=()
D_PIDS=()
WATCHDOG=

cleanup_netns() {
	local p f n
	[ -n "$WATCHDOG" ] && kill "$WATCHDOG" 2>/dev/null
	for p in "${D_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
	# migvm processes outlive their daemon by design: end them by pid.
	for f in "$WORK"/*/*.pid; do
		[ -f "$f" ] && kill -TERM "$(cat "$f")" 2>/dev/null
	done
	sleep 0.5
	for p in "${D_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
	for f in "$WORK"/*/*.pid; do
		[ -f "$f" ] && kill -KILL "$(cat "$f")" 2>/dev/null
	done
	# Deleting a namespace removes the veth end in it, and so its peer.
	for n in "${NS_MADE[@]}"; do
		ip netns exec "$n" ip link del "$VETH_A" 2>/dev/null
		ip netns del "$n" 2>/dev/null
	done
	cleanup
}
trap cleanup_netns EXIT
trap 'echo "FAIL: stopped (or took longer than 360 s)" >&2; exit 1' TERM INT

# Everything is bounded: each migctl by its own timeout, the whole test here.
# The watchdog keeps none of the test's output open (CTest would wait for
# its sleep to end before calling the test finished).
(
	sleep 360
	kill -TERM $$
) >/dev/null 2>&1 &
WATCHDOG=$!

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
	# Not under timeout(1): $! must be migd itself (ip netns exec execs it).
	ip netns exec "$ns" "$MIGD" --state-dir "$WORK/$name" \
		--control "$WORK/$name.sock" --listen "$ip:7400" \
		--psk-file "$WORK/psk" --log-level debug \
		>"$WORK/migd-$name.out" 2>"$WORK/migd-$name.err" &
	D_PIDS+=($!)
	wait_migd_ready "$name"
}

check_runs_on() { # check_runs_on HOST: vm1 runs there, beats, no mismatch
	local s
	s=$(mc "$1" --json status vm1) || fail "vm1 not on $1: $s"
	[ "$(jfield "$s" state)" = running ] || fail "$1 says $s"
	wait_vm_hb "$1" vm1 $(($(jfield "$s" hb_lines) + 2))
	s=$(mc "$1" --json status vm1)
	[ "$(jfield "$s" mismatches)" = 0 ] || fail "mismatch on $1: $s"
	grep -q MISMATCH "$WORK/$1/vm1.console" && fail "MISMATCH on $1's console"
	return 0
}

# throughput JSON: prints "GBIT ROUND1_GBIT" (wire bytes / round time, all
# rounds and the first) and fails above LIMIT Gbit/s (if LIMIT is given).
throughput() {
	python3 - "$1" "${2:-}" <<'PY'
import json, sys
r = json.loads(sys.argv[1])["last_result"]
assert r["status"] == "ok" and r["rounds"] >= 1, r
rounds = r["per_round"]
b = sum(x["bytes"] for x in rounds)
t = sum(x["duration_ms"] for x in rounds) / 1e3
assert b > 0 and t > 0, r
agg = b * 8 / t / 1e9
first = rounds[0]["bytes"] * 8 / (rounds[0]["duration_ms"] / 1e3) / 1e9
# the figure migvm itself reports for each round (bytes/s)
rep = [x["throughput"] * 8 / 1e9 for x in rounds]
print("%.3f %.3f" % (agg, first))
print("  %d rounds, %.1f MiB on the wire in %.3f s: %.3f Gbit/s; round 1: "
      "%.3f Gbit/s; reported per round: %s Gbit/s; downtime %.1f ms, "
      "total %.1f ms" % (r["rounds"], b / 2**20, t, agg, first,
      ", ".join("%.3f" % x for x in rep), r["downtime_ms"],
      r["total_time_ms"]), file=sys.stderr)
if sys.argv[2]:
    lim = float(sys.argv[2])
    # A single round counts bytes as written to the socket, a few MiB of
    # which may still sit in socket buffers when it ends (the last rounds
    # are short): rounds of 8 MiB or more get 20% more headroom. The
    # stop-and-copy round is left out: it ends once its bytes are in the
    # sockets, and two connections' buffers can hold most of a 16 MiB set.
    big = [x for x in rounds[:-1] if x["bytes"] >= 8 << 20]
    bad = [x for x in big if x["throughput"] * 8 / 1e9 > lim * 1.2]
    if agg > lim or bad:
        print("throughput above %.2f Gbit/s: %.3f, rounds %s" % (lim, agg, bad),
              file=sys.stderr)
        sys.exit(1)
PY
}

head -c 32 /dev/urandom | base64 >"$WORK/psk"
chmod 600 "$WORK/psk"
start_migd a "$NS_A" "$IP_A"
start_migd b "$NS_B" "$IP_B"
reach() { # reach NS IP: a TCP connection to IP:7400 from NS
	ip netns exec "$1" timeout 10 python3 -c 'import socket,sys; socket.create_connection((sys.argv[1], 7400), 5).close()' "$2"
}
reach "$NS_A" "$IP_B" || fail "A cannot reach B's migd over the veth"
reach "$NS_B" "$IP_A" || fail "B cannot reach A's migd over the veth"

mc a start vm1 --mem 512 --cpus 1 --cmdline "touch=64M wss=16M hb=300" >/dev/null ||
	fail "start vm1"
wait_vm_hb a vm1 2
ok "vm1 runs on A"

# A -> B over the unshaped veth.
res=$(mc a --json migrate vm1 --to "$IP_B:7400") || fail "migrate A->B: $res"
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
res=$(mc b --json migrate vm1 --to "$IP_A:7400") || fail "migrate B->A: $res"
[ "$(jfield "$res" state)" = migrated ] || fail "B says $res"
t=$(throughput "$res" 1.25 2>"$WORK/tput2")
rc=$?
cat "$WORK/tput2"
g_shaped=${t%% *}
[ "$rc" = 0 ] && [ -n "$g_shaped" ] || fail "throughput not consistent with a 1 Gbit/s link: $res"
# the tbf counters saw the migration
# the tbf on B's end carried the migration (and says whether it held it back)
sent=$(ip netns exec "$NS_B" tc -s qdisc show dev "$VETH_B" | grep -o 'Sent [0-9]* bytes.*' | head -1)
[ "$(awk '{print $2}' <<<"$sent")" -ge $((64 << 20)) ] 2>/dev/null ||
	fail "the tbf on B did not carry the migration: $sent"
check_runs_on a
grep -q "vm1 *migrated" <<<"$(mc b list)" || fail "B does not list vm1 as migrated"
ok "and back to A at 1 Gbit/s: $g_shaped Gbit/s measured (unshaped: $g_free); tbf on B: $sent"

# The link goes down mid pre-copy (4 MiB/s: 64 MiB take ~16 s).
mc a --json migrate vm1 --to "$IP_B:7400" --max-bandwidth 4M --no-wait >/dev/null ||
	fail "migrate A->B did not start"
for _ in $(seq 150); do
	s=$(mc a --json status vm1)
	[ "$(python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get("progress", {}).get("pages_sent", 0))' "$s" 2>/dev/null)" -gt 1000 ] 2>/dev/null && break
	sleep 0.1
done
grep -q '"phase":"precopy"' <<<"$s" || fail "no pre-copy progress: $s"
ip -n "$NS_B" link set "$VETH_B" down || fail "link down"
ok "link down during pre-copy"
for _ in $(seq 400); do # stall_timeout_ms is 10 s; the release waits 10 s more
	s=$(mc a --json status vm1)
	[ "$(jfield "$s" state)" != migrating ] && break
	sleep 0.1
done
[ "$(jfield "$s" state)" = running ] || fail "vm1 not running on A after the link went down: $s"
grep -q "no progress on the connection" <<<"$(jfield "$s" last_error)" ||
	fail "status does not say why: $s"
check_runs_on a
ok "A resumed vm1: $(jfield "$s" last_error)"
for _ in $(seq 450); do # B's incoming migvm gives up after 30 s of silence
	s=$(mc b --json status vm1 2>/dev/null) || break
	[ "$(jfield "$s" state)" != incoming ] && break
	sleep 0.1
done
[ "$(jfield "$s" state)" != incoming ] || fail "B still holds the reservation: $s"
out=$(mc b --json list) || fail "list on B failed: $out"
grep -q '"state":"incoming"' <<<"$out" && fail "B lists an incoming VM: $out"
ok "B released it: $(jfield "$s" last_error)"
ip -n "$NS_B" link set "$VETH_B" up || fail "link up"
# While the link was down A's neighbour entry for B failed; until it is
# resolved again a connect can fail at once (EHOSTUNREACH): retry, bounded.
for i in $(seq 20); do
	reach "$NS_A" "$IP_B" 2>/dev/null && break
	[ "$i" = 20 ] && fail "A cannot reach B again (10 s after the link came up)"
	sleep 0.5
done
res=$(mc a --json migrate vm1 --to "$IP_B:7400") || fail "migrate A->B after the link came back: $res"
[ "$(jfield "$res" state)" = migrated ] || fail "A says $res"
check_runs_on b
ok "with the link up again vm1 moves to B"
out=$(mc a --json list) || fail "list on A failed: $out"
grep -q '"state":"incoming"' <<<"$out" && fail "A still holds an incoming record"

mc b stop vm1 >/dev/null || fail "stop"
for _ in $(seq 100); do
	s=$(mc b --json status vm1)
	[ "$(jfield "$s" state)" = exited ] && break
	sleep 0.1
done
[ "$(jfield "$s" state)" = exited ] || fail "vm1 did not stop: $s"
ok "stopped"
