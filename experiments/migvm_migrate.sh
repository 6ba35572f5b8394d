#!/usr/bin/env bash
# Live-migrate the test guest between two migvm processes over loopback TCP
# and print one JSON object on stdout: migvm's side of the comparison.
#
#   experiments/migvm_migrate.sh --mode default --mem 1024 --cpus 2 \
#       --touch 512M --wss 64M --rate max --fill random
#
# --help lists every option; experiments/README.md says what the figures mean. The work is
# done by lib/migvm_migrate.py, run by lib/run_side.sh in a private network
# namespace with a temporary directory and a trap that cleans up.
exec "$(dirname "${BASH_SOURCE[0]}")/lib/run_side.sh" migvm_migrate "$@"
