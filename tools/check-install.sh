#!/usr/bin/env bash
# Installs the build into a scratch prefix and builds tests/install against
# it with pkg-config, as another meson project would; then runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
meson install -C "$build" --destdir "$scratch/root" >/dev/null
pcdir=$(dirname "$(find "$scratch/root" -name baton.pc | head -1)")
prefix=$(cd "$pcdir/../../.." && pwd)
sed -i "s|^prefix=.*|prefix=$prefix|" "$pcdir/baton.pc" "$pcdir/baton-client.pc"
PKG_CONFIG_PATH="$pcdir" meson setup "$scratch/consumer" tests/install >/dev/null
ninja -C "$scratch/consumer" >/dev/null
"$scratch/consumer/consumer"
"$scratch/consumer/client"
"$scratch/consumer/embedded"
# The systemd unit is installed, names the installed batond, and passes
# systemd's own check (where systemd-analyze exists; --root resolves paths).
unit=$(find "$scratch/root" -name 'batond@.service' | head -1)
[[ -n "$unit" ]] || { echo "install check: batond@.service not installed"; exit 1; }
if command -v systemd-analyze >/dev/null; then
  cp "$unit" "$scratch/batond@blade1.service"
  sed -i "s|^\(ExecStart[A-Za-z]*=\)/|\1$scratch/root/|" "$scratch/batond@blade1.service"
  out=$(systemd-analyze verify "$scratch/batond@blade1.service" 2>&1 | grep -v "not executable" || true)
  [[ -z "$out" ]] || { echo "install check: systemd-analyze verify batond@.service:"; echo "$out"; exit 1; }
fi
# The Pacemaker resource agent is installed, executable, and says what it is.
agent=$(find "$scratch/root" -path '*/ocf/resource.d/baton/baton' | head -1)
[[ -x "$agent" ]] || { echo "install check: the OCF agent (ocf/resource.d/baton/baton) is not installed"; exit 1; }
OCF_ROOT=/usr/lib/ocf "$agent" meta-data | grep '<resource-agent name="baton"' >/dev/null ||
  { echo "install check: the OCF agent's meta-data is wrong"; exit 1; }
echo "install check: ok (static libbaton.a from C++ and C, and libbaton-client.a, via pkg-config; batond@.service; the OCF agent)"
