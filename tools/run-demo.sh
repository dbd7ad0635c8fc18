#!/usr/bin/env bash
# Sets up the machine, builds, and runs the main demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
[[ -f build/build.ninja ]] || meson setup build --buildtype=debugoptimized
ninja -C build
exec build/tools/baton-demo "$@"
