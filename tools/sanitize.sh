#!/bin/sh
# Sanitizer and fuzzing jobs (README, "Sanitizers and fuzzing"). Needs clang and libclang-rt-14-dev
# (`sh tools/quickstart.sh sanitize` installs them and runs `all`).
#   sh tools/sanitize.sh asan          unit tests under ASan + UBSan (build-asan: clang, -Dfuzz=true)
#   sh tools/sanitize.sh fuzz [SECS]   each libFuzzer harness for SECS seconds (default 60), one at a time,
#                                      from its seed corpus in build-asan; new inputs go to
#                                      build-asan/tests/fuzz/NAME/corpus, failing ones beside it
#   sh tools/sanitize.sh tsan          the concurrency tests under ThreadSanitizer on Highway's SSE4 target
#                                      (build-tsan; TSan cannot see accesses wider than 16 bytes)
#   sh tools/sanitize.sh ci            what `sh tools/quickstart.sh test` adds: the asan unit tests (but plan)
#                                      and a 30 s smoke run of each harness (meson tests of build-asan), then tsan
#   sh tools/sanitize.sh all           asan, fuzz 60, tsan
set -eu
cd "$(dirname "$0")/.."
job=${1:-}
seconds=${2:-60}
export CC=clang CXX=clang++
no_gpu="-Dcuda=disabled -Dhip=disabled -Djax=disabled"
# Left out: the Python-driven tests (an uninstrumented interpreter), the GPU tests (a GPU) and the HIP
# runtime tests (the HIP plugin, not built here). gpu_planner is the GPU plugin's host-side planner.
unit_tests="contract validation plan quantized merge dtype c_api exports simd simd_kernels simd_tiles_emulated simd_plan
  plugin_loading plugin_none auto_fallback gpu_planner golden info example_c example_cpp"

asan_setup() {
  [ -f build-asan/build.ninja ] || meson setup build-asan $no_gpu -Dfuzz=true -Dbuildtype=debugoptimized \
    -Db_sanitize=address,undefined -Db_lundef=false \
    -Dc_args=-fno-sanitize-recover=all -Dcpp_args=-fno-sanitize-recover=all
}

asan_build() {
  asan_setup
  ninja -C build-asan
}

tsan_build() {
  # Only Highway's SSE4 target is compiled (AVX3_DL, AVX3 and AVX2 disabled: 0x380), so every kernel
  # access is at most 16 bytes wide and visible to TSan; oneTBB's inline templates are not instrumented.
  [ -f build-tsan/build.ninja ] || meson setup build-tsan $no_gpu -Dbuildtype=debugoptimized \
    -Db_sanitize=thread -Db_lundef=false \
    -Dcpp_args="['-DHWY_DISABLED_TARGETS=0x380', '-fsanitize-ignorelist=$PWD/tools/tsan_ignorelist.txt']"
  ninja -C build-tsan tests/test_plan tests/test_contract tests/simd/test_simd
}

asan() {
  asan_build
  # shellcheck disable=SC2086
  meson test -C build-asan --no-rebuild --print-errorlogs --timeout-multiplier 4 $unit_tests
}

fuzz() {
  asan_build
  for name in args nan case; do
    log="build-asan/tests/fuzz/$name.log"
    echo "fuzz_$name: $seconds s (log: $log)"
    if ! sh tests/fuzz/run.sh "build-asan/tests/fuzz/fuzz_$name" "tests/fuzz/corpus/$name" \
        "build-asan/tests/fuzz/$name" "$seconds" >"$log" 2>&1; then
      tail -n 60 "$log"
      echo "fuzz_$name found a failing input: build-asan/tests/fuzz/$name/crash-*" >&2
      exit 1
    fi
    grep -E "^stat::(number_of_executed_units|new_units_added|peak_rss_mb)" "$log"
  done
}

tsan() {
  tsan_build
  # The tests set TSAN_OPTIONS (tools/tsan_suppressions.txt).
  meson test -C build-tsan --no-rebuild --print-errorlogs --suite tsan
}

ci() {
  asan_setup
  # `plan` is left out here: its long contexts on the reference take minutes under ASan (fuzz_args runs
  # plans and runs instead); `asan` runs it. Without --no-rebuild, meson test builds only what the named
  # tests need (not the GPU tests, the benchmark or the other tests: minutes of CI under ASan).
  # shellcheck disable=SC2086
  meson test -C build-asan --print-errorlogs --timeout-multiplier 4 \
    $(echo $unit_tests | sed 's/\bplan\b//') fuzz_args fuzz_nan fuzz_case
  tsan
}

case "$job" in
  asan) asan ;;
  fuzz) fuzz ;;
  tsan) tsan ;;
  ci) ci ;;
  all) asan && fuzz && tsan ;;
  *) echo "usage: sh tools/sanitize.sh asan|fuzz [SECONDS]|tsan|ci|all" >&2; exit 2 ;;
esac
