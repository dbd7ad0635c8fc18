#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, AddressSanitizer, the engine
# instrumented for coverage) in build-fuzz and runs each on its seed corpus
# for SECONDS (default 20). New inputs go to build-fuzz/corpus/<target>; a
# crash stops the run with the reproducer saved as build-fuzz/crash-*.
#
#   tools/run-fuzz.sh                # CI: 20 s per target
#   tools/run-fuzz.sh 3600 wire      # an hour on one target
#   build-fuzz/tests/fuzz/fuzz_wire build-fuzz/crash-...   # replay a crash
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(wire engine_frames ipc config)

if [[ ! -f build-fuzz/build.ninja ]]; then
  CC=clang CXX=clang++ meson setup build-fuzz --buildtype=debugoptimized -Dfuzz=true -Dbenchmarks=false \
    -Db_sanitize=address -Db_lundef=false \
    -Dc_args=-fsanitize=fuzzer-no-link -Dcpp_args=-fsanitize=fuzzer-no-link
fi
ninja -C build-fuzz $(printf 'tests/fuzz/fuzz_%s ' "${targets[@]}")

export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
for t in "${targets[@]}"; do
  mkdir -p "build-fuzz/corpus/$t"
  echo "fuzz: $t for ${seconds}s"
  (cd build-fuzz && BATON_LOG=error "tests/fuzz/fuzz_$t" -max_total_time="$seconds" -rss_limit_mb=4096 \
      -timeout=10 -print_final_stats=1 "corpus/$t" "../tests/fuzz/corpus/$t" 2>&1 | \
    grep -E "^(#[0-9]+ *DONE|stat::number_of_executed_units|==[0-9]+==ERROR|SUMMARY)" || true)
  # libFuzzer exits non-zero on a crash, leak, timeout or OOM and writes the input.
  found=$(compgen -G "build-fuzz/crash-*" ; compgen -G "build-fuzz/oom-*" ; compgen -G "build-fuzz/timeout-*") || true
  if [[ -n "$found" ]]; then
    echo "fuzz: $t found a failing input:" $found
    exit 1
  fi
done
echo "fuzz: ${targets[*]}: no crash"
