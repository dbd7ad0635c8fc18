#!/usr/bin/env bash
# Sets up the machine, builds, and runs every test suite; then the unit suite
# again under AddressSanitizer + UndefinedBehaviorSanitizer.
# Usage: tools/run-tests.sh [--no-sanitizers] [meson test args...]
set -euo pipefail
cd "$(dirname "$0")/.."
sanitizers=1
if [[ "${1:-}" == "--no-sanitizers" ]]; then sanitizers=0; shift; fi

bash tools/setup.sh

[[ -f build/build.ninja ]] || meson setup build --buildtype=debugoptimized
ninja -C build
meson test -C build --print-errorlogs --num-processes 2 "$@"
bash tools/check-install.sh build

if ((sanitizers)); then
  [[ -f build-asan/build.ninja ]] || meson setup build-asan --buildtype=debug \
    -Db_sanitize=address,undefined -Db_lundef=false -Dbenchmarks=false
  ninja -C build-asan
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 ASAN_OPTIONS=detect_leaks=1 \
    meson test -C build-asan --suite unit --print-errorlogs --num-processes 2
fi

# One closing line over every suite run above, in the form CI reads.
logs=(build/meson-logs/testlog.json)
((sanitizers)) && logs+=(build-asan/meson-logs/testlog.json)
python3 - "${logs[@]}" <<'PY'
import json, sys
passed = failed = skipped = 0
for path in sys.argv[1:]:
    try:
        lines = open(path).read().splitlines()
    except FileNotFoundError:
        continue
    for line in lines:
        r = json.loads(line).get("result")
        if r in ("OK", "EXPECTEDFAIL"): passed += 1
        elif r == "SKIP": skipped += 1
        else: failed += 1
print(f"tests: {passed} passed, {failed} failed, {skipped} skipped")
sys.exit(1 if failed else 0)
PY
