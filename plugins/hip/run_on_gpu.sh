#!/bin/sh
# Runs the GPU checks and the GPU benchmark on a machine with a GPU, from a build directory made
# elsewhere (meson setup BUILD; ninja -C BUILD), with the shared libraries it links copied to BUILD/deps
# when the machine lacks them (Debian's libhwy, libtbb, Boost.Test):
#   plugins/hip/run_on_gpu.sh [BUILD] [RESULTS]
# Prints, and writes to RESULTS (default .): rpa info, the plugin-loading and GPU-vs-reference tests,
# a Python-binding check with backend="gpu", and the W1/W2/W3 benchmark (with and without matrix cores).
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
step gpu_compare "$build/tests/plugins/test_gpu_compare" --log_level=test_suite
# RPA_GPU_MATRIX_CORES=0: the FMA products in place of mma for 16-bit inputs (NVIDIA), checked and timed too.
step gpu_compare_fma env RPA_GPU_MATRIX_CORES=0 "$build/tests/plugins/test_gpu_compare" --log_level=test_suite
step python_gpu env RPA_LIBRARY="$build/core/librpa.so" PYTHONPATH=python python3 - <<'PY'
# One random mixed batch through the binding: gpu against reference, f32 (the acceptance path).
import numpy as np
import rpa
assert rpa.backend_available("gpu"), rpa.plugin_reports()
rng = np.random.default_rng(0)
q_lens, ctx, QH, KVH, D, ps = [1, 7, 0, 3], [50, 300, 9, 3], 8, 2, 128, 16
W = max(-(-c // ps) for c in ctx) + 1
P = sum(-(-c // ps) for c in ctx) + 2
kv = rng.standard_normal((P, ps, 2 * KVH, D)).astype(np.float32)
tables = rng.integers(0, P, size=(len(ctx), W), dtype=np.int32)
qsl = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
q = rng.standard_normal((int(qsl[-1]) + 2, QH, D)).astype(np.float32)
args = (q, kv, np.array(ctx, np.int32), tables, qsl, len(ctx))
kw = dict(logits_soft_cap=20.0, sliding_window=40, softmax_aux=rng.standard_normal((KVH, 1)).astype(np.float32),
          return_lse=True)
out_g, lse_g = rpa.ragged_paged_attention(*args, backend="gpu", **kw)
out_r, lse_r = rpa.ragged_paged_attention(*args, backend="reference", **kw)
finite = np.isfinite(lse_r)
assert (lse_g[~finite] == lse_r[~finite]).all()
err = max(np.abs(out_g - out_r).max(), np.abs(lse_g[finite] - lse_r[finite]).max())
print("python binding, backend=gpu vs reference: max abs error %.3g" % err)
assert err <= 2e-5
PY
step bench "$build/plugins/rpa_gpu_bench"
step bench_fma env RPA_GPU_MATRIX_CORES=0 "$build/plugins/rpa_gpu_bench"
exit $status
