#!/usr/bin/env bash
# Install exactly the Debian packages that building, testing and the demo
# need. Idempotent: when everything is there it only checks and returns.
#   scripts/setup.sh          build, tests (incl. experiments' quick mode), demo
set -euo pipefail

pkgs=(
	build-essential cmake pkg-config       # toolchain
	libuv1-dev libzstd-dev                 # transport, page codec
	libxxhash-dev                          # memory hash (XXH3, compiled in)
	libgnutls28-dev                        # TLS 1.3 on migration connections
	openssl                                # certificates for the TLS tests
	libprotobuf-c-dev protobuf-c-compiler  # wire protocol
	libcmocka-dev                          # unit tests
	iproute2                               # network namespaces, tc
	binutils                               # nm for the export test
	abigail-tools                          # abidiff: the ABI check
	qemu-system-x86                        # the test guest under QEMU
	gnuplot-nox                            # experiments/ plots (CI quick mode)
	clang libclang-rt-14-dev               # fuzz targets (libFuzzer)
)

# The nested KVM host (tests/nested/) for machines without /dev/kvm, and for
# the tests that need two kernels: Debian's kernel and busybox-static,
# fetched with apt-get download into a cache, never installed.
nested() {
	local v
	if v=$("$(dirname "$0")/../tests/nested/fetch.sh"); then
		echo "setup: nested host kernel $v"
	else
		echo "setup: no nested host kernel: the KVM tests need /dev/kvm here" >&2
	fi
}

missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
		missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
	echo "setup: all ${#pkgs[@]} packages present"
	nested
	exit 0
fi

echo "setup: installing ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
	command -v sudo >/dev/null || {
		echo "setup: need root (or sudo) to install: ${missing[*]}" >&2
		exit 1
	}
	sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
if ! $sudo apt-get update -q >/tmp/mig-setup-apt.log 2>&1; then
	echo "setup: apt-get update failed, see /tmp/mig-setup-apt.log" >&2
	tail -n 5 /tmp/mig-setup-apt.log >&2
	exit 1
fi
if ! $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" \
	>>/tmp/mig-setup-apt.log 2>&1; then
	echo "setup: could not install: ${missing[*]} (log: /tmp/mig-setup-apt.log)" >&2
	tail -n 10 /tmp/mig-setup-apt.log >&2
	exit 1
fi
nested
echo "setup: done"
