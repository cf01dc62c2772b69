// `rpa bench`'s runner: builds each workload over one shared KV pool, checks every backend against the
// reference on a sample of rows, and times it; every figure is set against this machine's limits
// measured in the same run. Only the public C ABI is used.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench/workloads.h"

namespace rpa::bench {

// A request the bench cannot serve (unknown workload, unavailable backend): `rpa bench` exits 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Options {
  std::vector<std::string> workloads{"W1", "W2", "W3", "context", "threads"};
  std::vector<std::string> backends;  // empty: every available one
  std::vector<int> contexts{256, 1024, 4096, 16384, 32768};
  int repeats = 30;
  int threads = 0;
  Config config;
  std::string case_file;  // set: time this case file (golden/) instead of the workloads
};

// One timed figure.
struct Row {
  std::string workload, what, backend;
  int threads = 0;
  std::string path;  // CPU: the products the prefill items took, "amx" or "fma" (peak: that path's); gpu: empty
  double ms = 0;          // the kernels of one planned call (rpa_time_attention)
  double planned_ms = 0;  // a whole planned run, back to back (rpa_plan_time)
  double one_call_ms = 0;  // CPU backends: one rpa_attention call (validation and planning included)
  double device_metadata_ms = 0;  // GPU: a whole planned run with the metadata in device memory
  double graph_ms = 0;  // NVIDIA: that run, per call, replayed from a CUDA graph of 32 runs (0: not measured)
  double kv_bytes = 0, flops = 0, bandwidth = 0, peak = 0, reference_flops_rate = 0;
  int64_t sample_rows = 0, total_rows = 0;
  double max_error = 0;
  bool valid = false;

  double kv_rate() const { return kv_bytes / (ms * 1e-3); }
  double flop_rate() const { return flops / (ms * 1e-3); }
  double speedup() const { return reference_flops_rate > 0 ? flop_rate() / reference_flops_rate : 0; }
};

struct Measurements {
  std::vector<Row> rows;
  int cores = 0, machine_threads = 0;
  double fma_peak = 0;  // f32 FLOP/s of `machine_threads` threads
  double amx_peak = 0;  // bf16 FLOP/s of AMX on `machine_threads` threads; 0 where the simd backend does not use it
  bool all_valid() const;
};

// Throws UsageError for options that name nothing runnable, before any work is done.
void check_options(const Options& options);

// Runs every workload of `options` on every selected backend.
Measurements run(const Options& options);

}  // namespace rpa::bench
