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
sed -i "s|^prefix=.*|prefix=$prefix|" "$pcdir/baton.pc"
PKG_CONFIG_PATH="$pcdir" meson setup "$scratch/consumer" tests/install >/dev/null
ninja -C "$scratch/consumer" >/dev/null
"$scratch/consumer/consumer"
echo "install check: ok (static libbaton.a via pkg-config)"
