#!/usr/bin/env bash
# Install libmigrate into a temporary prefix and build a program outside the
# tree against it with pkg-config only: the public API must be enough, and
# the installed header, library and migrate.pc must agree.
set -euo pipefail
build=$1 src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cmake --install "$build" --prefix "$tmp/prefix" >"$tmp/install.log" 2>&1 ||
	{ cat "$tmp/install.log"; exit 1; }
pc=$(dirname "$(find "$tmp/prefix" -name migrate.pc | head -n1)")
[ -n "$pc" ] || { echo "migrate.pc was not installed"; exit 1; }
export PKG_CONFIG_PATH=$pc
cp "$src/tests/install/consumer.c" "$tmp/"
# shellcheck disable=SC2046
cc -std=c11 -Wall -Wextra -Werror -o "$tmp/consumer" "$tmp/consumer.c" \
	$(pkg-config --cflags --libs migrate)
libdir=$(pkg-config --variable=libdir migrate)
out=$(LD_LIBRARY_PATH=$libdir "$tmp/consumer")
echo "$out"
# It must have loaded the installed library, not one from the build tree.
# (ldd's output is kept first: with pipefail, grep -q quitting at the first
# match could fail the pipeline with ldd's SIGPIPE.)
deps=$(LD_LIBRARY_PATH=$libdir ldd "$tmp/consumer") ||
	{ echo "ldd failed on the consumer"; exit 1; }
grep -q "$tmp/prefix" <<<"$deps" ||
	{ echo "consumer did not load the installed libmigrate"; exit 1; }
echo "$out" | grep -qx "version $(pkg-config --modversion migrate)" ||
	{ echo "version mismatch between library and migrate.pc"; exit 1; }
echo "install test passed"
