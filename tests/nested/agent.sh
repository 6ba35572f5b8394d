#!/usr/bin/env bash
# The job agent inside a nested host (started by its /init, in the root made
# of the outer machine's files). It runs the jobs the outer runner drops in
# STATE/jobs: ID.job is a bash script; its output goes to ID.out and its exit
# status to ID.rc. ID.kill asks for the job's end. STATE/beat changes every
# second while the agent lives. Each job has a cgroup of
# its own, so that it and whatever it started end together. STATE/halt, or
# IDLE seconds (STATE/idle, default 900) with no job running, ends the agent.
#   agent.sh STATE
# (no set -u: bash 5.1 calls an empty associative array unbound)
state=$1
jobs=$state/jobs
cg=/sys/fs/cgroup
idle=$(cat "$state/idle" 2>/dev/null || echo 900)
declare -A running # id -> pid of its runner subshell
# A nap without forking sleep(1): under emulation each process costs.
if exec {nap_fd}<> <(:); then
	nap() { read -r -t "$1" -u "$nap_fd"; }
else
	nap() { sleep "$1"; }
fi

# PID has ended: gone, or a zombie. Zombies must count: bash 5.2's `read -t`
# (nap) whose timer fires while bash handles a SIGCHLD leaves SIGCHLD
# blocked for good (seen here: SigBlk 0x10000 in this agent, its ended jobs
# zombies), and bash then reaps a child only when it waits for it; with
# `kill -0` alone an ended job ran on until its runner outside timed it out.
gone() { # PID
	local st
	kill -0 "$1" 2>/dev/null || return 0
	{ read -r st <"/proc/$1/stat"; } 2>/dev/null || return 0
	st=${st##*) }
	[[ $st == [ZX]* ]]
}

run_job() { # ID: run one job in its own cgroup, then report
	local id=$1 rc
	mkdir -p "$cg/job-$id"
	(
		echo $BASHPID >"$cg/job-$id/cgroup.procs"
		cd / && exec bash "$jobs/$id.run" </dev/null >>"$jobs/$id.out" 2>&1
	) &
	local pid=$! beat="" seen=$SECONDS n asked=""
	until gone $pid; do
		if [ -e "$jobs/$id.kill" ]; then
			# Every pass: the job may not be in its cgroup yet.
			[ -n "$asked" ] ||
				echo "nested: job ended on request" >>"$jobs/$id.out"
			asked=1
			echo 1 >"$cg/job-$id/cgroup.kill"
		fi
		# The runner outside rewrites ID.alive every second while it waits
		# (when it has one); 15 s without a change means it is gone.
		n=""; read -r n 2>/dev/null <"$jobs/$id.alive"
		if [ "$n" != "$beat" ]; then
			beat=$n seen=$SECONDS
		elif [ -n "$beat" ] && [ $((SECONDS - seen)) -ge 15 ]; then
			echo "nested: the runner outside is gone; ending the job" >>"$jobs/$id.out"
			echo 1 >"$cg/job-$id/cgroup.kill"
			beat=""
		fi
		nap 0.1
	done
	wait $pid
	rc=$?
	if [ -s "$cg/job-$id/cgroup.procs" ]; then
		echo "nested: the job left processes behind; ending them:" >>"$jobs/$id.out"
		for p in $(cat "$cg/job-$id/cgroup.procs"); do
			echo "  $p $(tr '\0' ' ' </proc/$p/cmdline 2>/dev/null)" >>"$jobs/$id.out"
		done
		echo 1 >"$cg/job-$id/cgroup.kill"
		for _ in $(seq 50); do [ -s "$cg/job-$id/cgroup.procs" ] || break; sleep 0.1; done
	fi
	rmdir "$cg/job-$id" 2>/dev/null
	echo $rc >"$jobs/$id.rc.tmp" && mv "$jobs/$id.rc.tmp" "$jobs/$id.rc"
}

mkdir -p "$jobs"
echo "$(uname -r) $(nproc) $(awk '/MemTotal/ {print $2}' /proc/meminfo)" >"$state/ready.tmp"
mv "$state/ready.tmp" "$state/ready"
last=$SECONDS beat=-1
while [ ! -e "$state/halt" ]; do
	# A sign of life every second: the runner outside tells a host that
	# still takes jobs from a wedged one by it.
	[ $beat = $SECONDS ] || { beat=$SECONDS; echo $beat >"$state/beat"; }
	for j in "$jobs"/*.job; do
		[ -e "$j" ] || continue
		id=$(basename "$j" .job)
		mv "$j" "$jobs/$id.run" || continue
		run_job "$id" &
		running[$id]=$!
	done
	for id in "${!running[@]}"; do
		gone "${running[$id]}" || continue
		wait "${running[$id]}"
		unset "running[$id]"
	done
	[ ${#running[@]} -gt 0 ] && last=$SECONDS
	if [ $((SECONDS - last)) -ge "$idle" ]; then
		echo "nested: no job for $idle s, halting" >"$state/idle-halt"
		break
	fi
	nap 0.1
done
for id in "${!running[@]}"; do
	echo 1 >"$cg/job-$id/cgroup.kill" 2>/dev/null
done
wait
