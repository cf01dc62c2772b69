#!/bin/sh
# Sanitizer and fuzzing jobs (README, "Sanitizers and fuzzing"). Needs clang and libclang-rt-14-dev
# (`sh tools/quickstart.sh sanitize` installs them and runs `all`).
#   sh tools/sanitize.sh asan          unit tests under ASan + UBSan (build-asan: clang, -Dfuzz=true)
#   sh tools/sanitize.sh fuzz [SECS]   each libFuzzer harness for SECS seconds (default 60) from its seed
#                                      corpus, in build-asan; new inputs go to build-asan/fuzz-corpus
#   sh tools/sanitize.sh tsan          the concurrency tests under ThreadSanitizer on Highway's SSE4 target
#                                      (build-tsan; TSan cannot see accesses wider than 16 bytes)
#   sh tools/sanitize.sh ci            asan, then fuzz 60
#   sh tools/sanitize.sh all           asan, fuzz 60, tsan
set -eu
cd "$(dirname "$0")/.."
job=${1:-}
seconds=${2:-60}
export CC=clang CXX=clang++
export ASAN_OPTIONS=abort_on_error=1:detect_leaks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
no_gpu="-Dcuda=disabled -Dhip=disabled"

asan_build() {
  [ -f build-asan/build.ninja ] || meson setup build-asan $no_gpu -Dfuzz=true -Dbuildtype=debugoptimized \
    -Db_sanitize=address,undefined -Db_lundef=false \
    -Dc_args=-fno-sanitize-recover=all -Dcpp_args=-fno-sanitize-recover=all
  ninja -C build-asan
}

asan() {
  asan_build
  # The Python suite runs an uninstrumented interpreter and gpu_compare needs a GPU: both left out.
  meson test -C build-asan --no-rebuild --print-errorlogs --timeout-multiplier 4 \
    contract validation dtype c_api exports simd plugin_loading plugin_none info
}

fuzz() {
  asan_build
  for name in args nan; do
    mkdir -p "build-asan/fuzz-corpus/$name" build-asan/fuzz-artifacts
    log="build-asan/fuzz-$name.log"
    echo "fuzz_$name: $seconds s (log: $log)"
    # The first directory receives new inputs; the checked-in seeds are only read.
    if ! "build-asan/tests/fuzz/fuzz_$name" "build-asan/fuzz-corpus/$name" "tests/fuzz/corpus/$name" \
        -max_total_time="$seconds" -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 \
        -artifact_prefix="build-asan/fuzz-artifacts/$name-" >"$log" 2>&1; then
      tail -n 60 "$log"
      echo "fuzz_$name found a failing input: build-asan/fuzz-artifacts/$name-*" >&2
      exit 1
    fi
    grep -E "^stat::(number_of_executed_units|new_units_added|peak_rss_mb)" "$log"
  done
}

tsan() {
  # Only Highway's SSE4 target is compiled (AVX3_DL, AVX3 and AVX2 disabled: 0x380), so every kernel
  # access is at most 16 bytes wide and visible to TSan.
  [ -f build-tsan/build.ninja ] || meson setup build-tsan $no_gpu -Dbuildtype=debugoptimized \
    -Db_sanitize=thread -Db_lundef=false -Dcpp_args=-DHWY_DISABLED_TARGETS=0x380
  ninja -C build-tsan tests/simd/test_simd tests/test_contract
  TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 build-tsan/tests/simd/test_simd \
    --run_test=one_context_from_several_threads,bitwise_identical_for_any_thread_count
  TSAN_OPTIONS=halt_on_error=1 build-tsan/tests/test_contract --run_test=one_context_serves_several_threads_at_once
}

case "$job" in
  asan) asan ;;
  fuzz) fuzz ;;
  tsan) tsan ;;
  ci) asan && fuzz ;;
  all) asan && fuzz && tsan ;;
  *) echo "usage: sh tools/sanitize.sh asan|fuzz [SECONDS]|tsan|ci|all" >&2; exit 2 ;;
esac
