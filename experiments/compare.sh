#!/usr/bin/env bash
# migvm against QEMU on the same test guest and workload, in the same run:
# for each case (idle 1 GiB, idle 4 GiB, 1 GiB dirtying 64 MiB and 256 MiB
# at rate=max; fill=random and fill=sparse), R repetitions with migvm and
# QEMU's candidate modes interleaved; prints a markdown table of medians and
# ratios (migvm / QEMU's best mode) and writes experiments/results/compare-*.
#
#   experiments/compare.sh                 # all cases, 3 repetitions
#   experiments/compare.sh --reps 1        # the whole matrix once
#   experiments/compare.sh --quick         # 1 rep of one small case
#   experiments/compare.sh --cases wss64M --fills sparse --migvm-modes default,conn1
#   experiments/compare.sh --report experiments/results/compare-*.jsonl
#
# --help lists every option. Needs root (KVM, private network namespaces).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec python3 "$here/lib/compare.py" "$@"
