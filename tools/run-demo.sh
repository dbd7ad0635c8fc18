#!/usr/bin/env bash
# Sets up the machine, builds, and runs the main job: a simulated chassis of
# batond processes, an application that fails over from a killed blade.
# Usage: tools/run-demo.sh [batonctl demo options]   (e.g. --blades 3)
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
[[ -f build/build.ninja ]] || meson setup build --buildtype=debugoptimized
ninja -C build
exec build/tools/batonctl demo "$@"
