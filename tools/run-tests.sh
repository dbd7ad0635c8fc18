#!/usr/bin/env bash
# Sets up the machine, builds, and runs every test suite; then the unit suite
# again under AddressSanitizer + UndefinedBehaviorSanitizer, and under
# ThreadSanitizer; then each fuzz target for a short while.
# Usage: tools/run-tests.sh [--no-sanitizers] [meson test args...]
set -euo pipefail
cd "$(dirname "$0")/.."
sanitizers=1
if [[ "${1:-}" == "--no-sanitizers" ]]; then sanitizers=0; shift; fi

bash tools/setup.sh

[[ -f build/build.ninja ]] || meson setup build --buildtype=debugoptimized
ninja -C build
rm -f build/*.xml build-asan/*.xml  # gtest reports of an earlier run
meson test -C build --print-errorlogs --num-processes 2 "$@"
bash tools/check-install.sh build

if ((sanitizers)); then
  [[ -f build-asan/build.ninja ]] || meson setup build-asan --buildtype=debug \
    -Db_sanitize=address,undefined -Db_lundef=false -Dbenchmarks=false
  ninja -C build-asan
  # One test binary at a time: a sanitizer slows every engine thread 3-15x,
  # and two seven-node clusters at once stall polls for seconds on two cores
  # (a stall past the failure timeout is a false suspicion, and a round that
  # waits on it times out: the test then measures the machine, not Baton).
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 ASAN_OPTIONS=detect_leaks=1 \
    meson test -C build-asan --suite unit --print-errorlogs --num-processes 1
fi

# ThreadSanitizer over the unit suite (engines with their worker threads and
# the callers that take the poll token) and the hostile-client suite (batond's
# accept, session and commit threads). DPDK's rings are compiled with the
# C11 memory model there, which TSan understands; the chassis suites with
# links are not run under TSan: DPDK's own libraries are not instrumented,
# so mbufs handed between its threads read as races (docs/reliability.md).
if ((sanitizers)); then
  [[ -f build-tsan/build.ninja ]] || meson setup build-tsan --buildtype=debug -Db_sanitize=thread \
    -Db_lundef=false -Dbenchmarks=false -Dc_args=-DRTE_USE_C11_MEM_MODEL -Dcpp_args=-DRTE_USE_C11_MEM_MODEL
  rm -f build-tsan/*.xml
  ninja -C build-tsan build.ninja  # a test added since the last run must be listed below
  unit_targets=$(meson introspect build-tsan --tests | python3 -c '
import json, os, sys
for t in json.load(sys.stdin):
    if "unit" in t["suite"][0]:
        print(os.path.relpath(t["cmd"][0], os.path.abspath("build-tsan")))')
  ninja -C build-tsan $unit_targets
  TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
    meson test -C build-tsan --no-rebuild --suite unit --print-errorlogs --num-processes 1
  # batond's own threads (accept, a session per application, commit) under
  # attack; without links batond runs no DPDK, so TSan sees every access.
  ninja -C build-tsan tools/batond tests/test_hostile_client
  TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
    meson test -C build-tsan --no-rebuild hostile_client --logbase hostile --print-errorlogs --num-processes 1
fi

# libFuzzer: each target (wire decoder, frame handlers, client requests,
# TOML config) for 20 s on its seed corpus; a crash fails the run.
if ((sanitizers)); then
  bash tools/run-fuzz.sh 20
fi

# One closing line over every suite run above, in the form CI reads. Test
# cases are counted from each GoogleTest binary's report (meson's gtest
# protocol writes build/<test>.xml), so a case skipped for want of network
# namespaces shows as skipped, not passed; a binary without a report (it
# crashed, or is no gtest) counts by its meson result.
logs=(build/meson-logs/testlog.json)
((sanitizers)) && logs+=(build-asan/meson-logs/testlog.json build-tsan/meson-logs/testlog.json
                         build-tsan/meson-logs/hostile.json)
python3 - "${logs[@]}" <<'PY'
import json, os, sys
import xml.etree.ElementTree as ET
passed = failed = skipped = 0
for path in sys.argv[1:]:
    builddir = os.path.dirname(os.path.dirname(path))
    try:
        lines = open(path).read().splitlines()
    except FileNotFoundError:
        continue
    for line in lines:
        entry = json.loads(line)
        result = entry.get("result")
        report = os.path.join(builddir, entry["name"].split(" / ")[-1] + ".xml")
        cases = []
        if result in ("OK", "FAIL", "SKIP") and os.path.exists(report):
            try:
                cases = ET.parse(report).getroot().iter("testcase")
                cases = list(cases)
            except ET.ParseError:
                cases = []
        if not cases:
            if result in ("OK", "EXPECTEDFAIL"): passed += 1
            elif result == "SKIP": skipped += 1
            else: failed += 1
            continue
        case_failed = 0
        for c in cases:
            if c.find("failure") is not None: failed += 1; case_failed += 1
            elif c.get("result") == "skipped" or c.find("skipped") is not None: skipped += 1
            else: passed += 1
        if result not in ("OK", "SKIP") and case_failed == 0:
            failed += 1  # the binary failed outside any test case (a crash at exit)
print(f"tests: {passed} passed, {failed} failed, {skipped} skipped")
sys.exit(1 if failed else 0)
PY
