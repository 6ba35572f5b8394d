#!/usr/bin/env bash
# Build the libFuzzer targets with clang in their own build dir and run each
# for a bounded time, starting from the generated seeds and the corpus that
# earlier runs left in the build dir. Exits non-zero if a target crashes,
# leaks, times out or fails a check; the input that did it is left in
# <build>/tests/fuzz/artifacts/ (reproduce: <build>/tests/fuzz/<target> FILE).
#
#   tests/fuzz/run.sh [seconds per target, default 30] [build dir, default build-fuzz]
#   FUZZ_TARGETS="fuzz_codec" tests/fuzz/run.sh 600      # one target, longer
set -euo pipefail

src=$(cd "$(dirname "$0")/../.." && pwd)
secs=${1:-30}
build=${2:-$src/build-fuzz}
targets=${FUZZ_TARGETS:-fuzz_frame fuzz_codec fuzz_delta fuzz_protocol fuzz_vmm fuzz_state}
jobs=$(nproc 2>/dev/null || echo 2)

if ! command -v clang >/dev/null; then
	echo "run.sh: clang not found (scripts/setup.sh installs it)" >&2
	exit 77
fi

CC=clang cmake -S "$src" -B "$build" -DMIG_FUZZ=ON \
	-DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
# shellcheck disable=SC2086
cmake --build "$build" -j"$jobs" --target fuzz_seeds $targets >/dev/null

out=$build/tests/fuzz
"$out/fuzz_seeds" "$out/seeds"
mkdir -p "$out/artifacts"

fail=0
for t in $targets; do
	corpus=$out/corpus/$t
	mkdir -p "$corpus"
	echo "== $t: ${secs}s"
	if ! "$out/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
		-max_len=65536 -print_final_stats=1 \
		-artifact_prefix="$out/artifacts/$t-" \
		"$corpus" "$out/seeds/$t" 2>"$out/$t.log"; then
		echo "FAIL $t (log: $out/$t.log)"
		tail -n 40 "$out/$t.log"
		fail=1
	else
		grep -E '^stat::(number_of_executed_units|peak_rss_mb)|^#[0-9]+ +DONE' \
			"$out/$t.log" || true
		echo "ok $t: corpus $(find "$corpus" -type f | wc -l) inputs"
	fi
done
exit "$fail"
