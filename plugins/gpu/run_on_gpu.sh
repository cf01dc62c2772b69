#!/bin/sh
# Runs the GPU checks and the GPU benchmark on a machine with a GPU, from a build directory made
# elsewhere (meson setup BUILD; ninja -C BUILD), with the shared libraries it links copied to BUILD/deps
# when the machine lacks them (Debian's libhwy, libtbb, Boost.Test):
#   plugins/gpu/run_on_gpu.sh [BUILD] [RESULTS]
# Prints, and writes to RESULTS (default .): rpa info, the plugin-loading test, the GPU tests and the
# conformance suite (also with the run-time compiled kernels; gpu_compare under compute-sanitizer's
# memcheck and racecheck),
# the Python binding's tests (gpu included), and `rpa bench` on the gpu backend (each product path).
set -u
build=${1:-build-gpu}
results=${2:-.}
mkdir -p "$results"
export LD_LIBRARY_PATH="$build/deps${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export RPA_PLUGIN_PATH="$build/plugins"
status=0

step() {  # step NAME COMMAND...: runs COMMAND, logs to RESULTS/NAME.log, remembers a failure
  name=$1
  shift
  echo "== $name"
  "$@" > "$results/$name.log" 2>&1
  code=$?
  cat "$results/$name.log"
  echo "== $name: exit $code"
  [ "$code" -eq 0 ] || status=1
}

plugins=$(cd "$build/plugins" && ls librpa_*.so 2>/dev/null | paste -sd, -)
step info "$build/tools/rpa" info
step plugin_loading env RPA_PLUGIN_PATH="$build/tests/plugins:$build/plugins" RPA_TEST_REAL_PLUGINS="$plugins" \
  "$build/tests/plugins/test_plugin_loading" --log_level=message
# suite DIR: the conformance suite's cases run on the gpu backend, then `rpa suite check`.
suite() {
  "$build/tools/rpa" suite make "$1" > /dev/null || return 2
  for case in "$1"/*.safetensors; do
    "$build/tools/rpa" run "$case" -o "${case%.safetensors}.out.safetensors" --backend gpu > /dev/null || return 1
  done
  "$build/tools/rpa" suite check "$1"
}
# The GPU tests (the GPU backend against the reference; plans and graphs; quantised caches) and the suite.
gpu_tests() {  # gpu_tests SUFFIX
  step "gpu_compare$1" "$build/tests/plugins/test_gpu_compare" --log_level=test_suite
  step "gpu_graph$1" "$build/tests/plugins/test_gpu_graph" --log_level=test_suite
  step "plan$1" "$build/tests/test_plan" --log_level=test_suite
  step "quantized$1" "$build/tests/test_quantized" --log_level=test_suite
  step "suite$1" suite "$results/suite$1"
}
gpu_tests ""
# The other product paths for 16-bit inputs (NVIDIA), checked and timed too: RPA_GPU_MATRIX_CORES=specialised
# (on Hopper, the warp-specialised kernel in place of matrix_core_kernel's wgmma) and =0 (FMA).
step gpu_compare_specialised env RPA_GPU_MATRIX_CORES=specialised "$build/tests/plugins/test_gpu_compare" --log_level=test_suite
step gpu_compare_fma env RPA_GPU_MATRIX_CORES=0 "$build/tests/plugins/test_gpu_compare" --log_level=test_suite
# The kernels compiled at run time (NVRTC) and launched through the module API: the path of AMD devices
# without an embedded code object. The first context compiles (about 90 s on an H200's host), the others
# read the cache.
export RPA_KERNEL_CACHE="$results/kernel_cache"
export RPA_GPU_KERNELS=rtc
gpu_tests _rtc
unset RPA_GPU_KERNELS
# Out-of-bounds accesses and shared-memory races in every kernel the comparison reaches (CUDA's
# compute-sanitizer, where installed; about a minute each on an H100).
if command -v compute-sanitizer > /dev/null 2>&1; then
  step memcheck compute-sanitizer --tool memcheck --error-exitcode 1 "$build/tests/plugins/test_gpu_compare"
  step racecheck compute-sanitizer --tool racecheck --error-exitcode 1 "$build/tests/plugins/test_gpu_compare"
  # The warp-specialised kernel's cases (16-bit KV): its mbarrier ring and named barriers.
  cases=--run_test=every_dtype_combination,sixteen_bit_prefill_within_2e5,nan_outside_the_window_never_leaks,nan_reaches_only_the_rows_that_see_it
  step memcheck_specialised env RPA_GPU_MATRIX_CORES=specialised compute-sanitizer --tool memcheck --error-exitcode 1 \
    "$build/tests/plugins/test_gpu_compare" "$cases"
  step racecheck_specialised env RPA_GPU_MATRIX_CORES=specialised compute-sanitizer --tool racecheck --error-exitcode 1 \
    "$build/tests/plugins/test_gpu_compare" "$cases"
fi
# The binding's suite: with a GPU present every test also runs backend="gpu" against the fp64 oracle.
step python env RPA_LIBRARY="$build/core/librpa.so" PYTHONPATH=python python3 -m pytest -q python/tests
step bench "$build/tools/rpa" bench --backends gpu --workloads W1 W2 W3 --goals bench/goals.json --json "$results/bench.json"
step bench_specialised env RPA_GPU_MATRIX_CORES=specialised "$build/tools/rpa" bench --backends gpu --workloads W1 W2 W3
step bench_fma env RPA_GPU_MATRIX_CORES=0 "$build/tools/rpa" bench --backends gpu --workloads W1 W2 W3
step bench_rtc env RPA_GPU_KERNELS=rtc "$build/tools/rpa" bench --backends gpu --workloads W1 W2 W3
exit $status
