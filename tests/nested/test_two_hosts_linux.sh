#!/usr/bin/env bash
# The Linux test VM moved by migd between two nested hosts: test_two_hosts.sh
# in its "linux" mode (see there).
#   test_two_hosts_linux.sh BUILD SRC
exec bash "$(dirname "$0")/test_two_hosts.sh" "${1:-}" "${2:-}" linux
