#!/usr/bin/env bash
# Clark et al.'s measurements with migvm, one command per study; each writes
# CSV, a markdown table and a gnuplot PNG to experiments/results/STUDY-STAMP/.
#
#   experiments/studies.sh dirty-rate     # downtime/total vs dirty rate, per wss
#   experiments/studies.sh mem-size       # vs guest memory 1-16 GiB, idle and light
#   experiments/studies.sh bandwidth      # vs link: tc 1 and 10 Gbit/s, unshaped
#   experiments/studies.sh rounds         # one migration round by round (1 Gbit/s)
#   experiments/studies.sh compare --csv experiments/results/compare-X.csv  # plot
#   experiments/studies.sh STUDY --quick  # one small point (CI)
#
# --help lists every option. Needs root (KVM, private network namespaces, tc)
# and gnuplot (scripts/setup.sh installs it).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec python3 "$here/lib/studies.py" "$@"
