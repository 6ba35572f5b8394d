#!/usr/bin/env bash
# libmigrate.so exports mig_* and nothing else (no protobuf, zstd or helper
# symbols leak), and it exports every function the public header declares.
set -euo pipefail
build=$1 src=$2
so=$(find "$build/libmigrate" -maxdepth 1 -name 'libmigrate.so.*.*' | head -n1)
[ -n "$so" ] || { echo "libmigrate.so not built"; exit 1; }
syms=$(nm -D --defined-only "$so" | awk '{print $3}' | sort)
bad=$(echo "$syms" | grep -v '^mig_' || true)
if [ -n "$bad" ]; then
	echo "symbols exported that are not mig_*:"; echo "$bad"; exit 1
fi
declared=$(cat "$src"/libmigrate/include/migrate/*.h | tr '\n' ' ' |
	grep -o 'MIG_API [^;(]*(' | grep -o 'mig_[a-z0-9_]*(' | tr -d '(' | sort -u)
missing=$(comm -23 <(echo "$declared") <(echo "$syms"))
if [ -n "$missing" ]; then
	echo "declared in the public headers but not exported:"; echo "$missing"; exit 1
fi
echo "exports ok: $(echo "$syms" | wc -l) mig_* symbols"
