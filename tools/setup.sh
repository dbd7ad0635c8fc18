#!/usr/bin/env bash
# Installs what Baton needs on a fresh Debian 12 machine (as root) and
# prepares the host: huge pages when the kernel allows, the EAL runtime dir.
# Idempotent: a second run installs nothing and changes nothing.
set -euo pipefail

packages=(
  build-essential pkg-config meson ninja-build python3-pyelftools
  dpdk dpdk-dev libdpdk-dev libhwloc-dev libnuma-dev
  libgtest-dev libgmock-dev googletest libbenchmark-dev
  libexpected-dev libtomlplusplus-dev libcli11-dev libfmt-dev nlohmann-json3-dev
  libisal-dev  # CRC32C by carry-less multiplication (engine/common/crc32c.cc)
  clang libclang-rt-14-dev
  iproute2 nftables procps
  resource-agents  # ocf-tester and ocf-shellfuncs, for the Pacemaker agent (tools/ocf/baton)
  pacemaker pacemaker-cli-utils corosync  # the agent's test under a real single-node cluster
  libcpg-dev libvotequorum-dev  # membership and quorum from Corosync (engine/control/corosync_membership)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep "install ok installed" >/dev/null || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  # Debian starts a corosync and pacemaker it has just installed (a one-node
  # cluster of its own) where systemd runs; the Pacemaker test starts its
  # own. Only what this run installed is stopped.
  if [[ -d /run/systemd/system ]]; then
    for p in "${missing[@]}"; do
      case $p in corosync | pacemaker) systemctl disable --now "$p.service" >/dev/null 2>&1 || true ;; esac
    done
  fi
fi

# Huge pages help DPDK (fewer TLB misses, contiguous mbuf pools) but are not
# required: the engine falls back to --no-huge when none are mounted.
if [[ -w /proc/sys/vm/nr_hugepages ]]; then
  want=${BATON_HUGEPAGES:-512}
  have=$(cat /proc/sys/vm/nr_hugepages)
  if ((have < want)); then echo "$want" >/proc/sys/vm/nr_hugepages 2>/dev/null || true; fi
  if ! mountpoint -q /dev/hugepages 2>/dev/null; then
    mkdir -p /dev/hugepages
    mount -t hugetlbfs nodev /dev/hugepages 2>/dev/null || true
  fi
fi
echo "setup: ok (huge pages: $(cat /proc/sys/vm/nr_hugepages 2>/dev/null || echo 0))"
