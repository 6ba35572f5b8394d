#!/usr/bin/env bash
# Run qemu_migrate.sh for several modes (and repetitions) on one guest
# configuration, append every JSON result to a file, and print a table of
# medians per mode, marking QEMU's best mode for the case ("the best of its
# settings"): lowest median of --best FIELD (default total_time_to_resume_ms;
# downtime_stop_to_resume_ms for the downtime comparison).
#
#   experiments/qemu_modes.sh --out /tmp/q.jsonl --reps 3 \
#       --modes plain,multifd-zstd,xbzrle,auto-converge -- \
#       --mem 1024 --cpus 2 --touch 512M --wss 64M --rate max
#
# Options after `--` go to qemu_migrate.sh unchanged (not --mode).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

modes=plain,multifd,multifd-zstd,xbzrle,auto-converge,xbzrle+auto-converge,multifd-zstd+auto-converge
reps=1
out=
best=total_time_to_resume_ms
while [[ $# -gt 0 ]]; do
    case $1 in
        --modes) modes=$2; shift 2 ;;
        --reps) reps=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --best) best=$2; shift 2 ;;
        --) shift; break ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "qemu_modes.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ -n $out ]] || { echo "qemu_modes.sh: --out FILE.jsonl is required" >&2; exit 2; }

IFS=, read -r -a mode_list <<<"$modes"
for ((rep = 1; rep <= reps; rep++)); do
    for mode in "${mode_list[@]}"; do
        echo "qemu_modes: rep $rep/$reps mode $mode" >&2
        "$here/qemu_migrate.sh" --mode "$mode" "$@" >>"$out" || true
    done
done
python3 "$here/lib/migbench.py" summarize "$out" --group-by mode --markdown --best "$best" \
    --fields total_time_to_resume_ms,downtime_stop_to_resume_ms,total_time_ms,downtime_ms,rounds,bytes_on_wire,cpu_throttle_percentage_max
