#!/usr/bin/env bash
# Live-migrate the test guest between two QEMUs over loopback TCP and print
# one JSON object on stdout: QEMU's side of the comparison with migvm.
#
#   experiments/qemu_migrate.sh --mode multifd-zstd --mem 1024 --cpus 2 \
#       --touch 512M --wss 64M --rate max --fill random
#
# --help lists every option; experiments/QEMU.md says what the figures mean. The work is
# done by lib/qemu_migrate.py, run by lib/run_side.sh in a private network
# namespace with a temporary directory and a trap that cleans up.
exec "$(dirname "${BASH_SOURCE[0]}")/lib/run_side.sh" qemu_migrate "$@"
