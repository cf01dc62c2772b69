#include "bench/runner.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <numeric>
#include <thread>

#include "bench/cuda_graph.h"
#include "bench/machine.h"
#include "core/dtype.h"
#include "golden/check.h"
#include "rpa/rpa.h"
#include "simd/tiles.h"

namespace rpa::bench {
namespace {

// Host memory for the KV pool, backed by transparent huge pages where the kernel allows it (as serving
// engines allocate their KV caches): with 4 KiB pages every KV row of a decode step is a TLB miss.
struct HugeBuffer {
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  explicit HugeBuffer(size_t bytes) : size_(bytes) {
    constexpr size_t kHuge = size_t{2} << 20;
    const size_t rounded = (bytes + kHuge - 1) / kHuge * kHuge;
    data_ = static_cast<uint8_t*>(std::aligned_alloc(kHuge, rounded));
    if (!data_) throw std::bad_alloc();
    madvise(data_, rounded, MADV_HUGEPAGE);  // advisory: without THP the pool still works
  }
  ~HugeBuffer() { std::free(data_); }
  HugeBuffer(const HugeBuffer&) = delete;
  HugeBuffer& operator=(const HugeBuffer&) = delete;
  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
};

// The per-tensor K and V scale of an 8-bit cache: codes of the values in [-1, 1) span most of the format.
const float* kv_scale(rpa_dtype dtype) {
  static const float int8 = 1.0f / 127, fp8 = 1.0f / 64;
  return dtype == RPA_DTYPE_INT8 ? &int8 : &fp8;
}

// Deterministic values in [-1, 1) (splitmix64), stored as `dtype` (8-bit: with kv_scale).
void fill_random(void* data, rpa_dtype dtype, size_t count, uint64_t seed) {
  for (size_t i = 0; i < count; ++i) {
    uint64_t z = (seed + i) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    store_kv(data, dtype, static_cast<int64_t>(i), static_cast<float>(z >> 40) / static_cast<float>(1 << 23) - 1.0f,
             *kv_scale(dtype));
  }
}

rpa_tensor tensor(void* data, rpa_dtype dtype, std::initializer_list<int64_t> shape) {
  rpa_tensor t{};  // zero strides: contiguous
  t.data = data;
  t.dtype = dtype;
  t.ndim = static_cast<int32_t>(shape.size());
  std::copy(shape.begin(), shape.end(), t.shape);
  return t;
}

void check(rpa_status status, const std::string& what) {
  if (status != RPA_STATUS_OK) throw std::runtime_error(what + ": " + rpa_last_error());
}

void check_cuda(int result, const char* what) {
  if (result != 0) throw std::runtime_error(std::string(what) + " failed: CUresult " + std::to_string(result));
}

// One problem over the shared KV pool, in host memory.
struct Problem {
  const Config& config;
  std::vector<int32_t> context_lens, block_tables, query_start_loc;
  std::vector<uint8_t> queries, out;
  int64_t tokens = 0, width = 1, pages = 0;
  double kv_bytes = 0, flops = 0;
  rpa_attention_args args;

  Problem(const Config& c, const Shape& shape, HugeBuffer& pool, int64_t pool_pages, const std::vector<int32_t>& page_order)
      : config(c) {
    const int32_t seqs = static_cast<int32_t>(shape.q_lens.size());
    const int64_t page = c.page_size;
    for (int32_t context : shape.context_lens) width = std::max<int64_t>(width, (context + page - 1) / page);
    block_tables.assign(static_cast<size_t>(seqs * width), 0);
    query_start_loc.push_back(0);
    for (int32_t s = 0; s < seqs; ++s) {
      const int64_t context = shape.context_lens[s], q_len = shape.q_lens[s];
      context_lens.push_back(static_cast<int32_t>(context));
      query_start_loc.push_back(static_cast<int32_t>(query_start_loc.back() + q_len));
      for (int64_t p = 0; p * page < context; ++p) block_tables[s * width + p] = page_order[pages++];
      kv_bytes += static_cast<double>(context) * c.token_kv_bytes();
      for (int64_t i = 0; i < q_len; ++i)
        flops += 4.0 * c.head_dim * c.q_heads * static_cast<double>(context - q_len + i + 1);
    }
    if (pages > pool_pages) throw std::logic_error("KV pool too small");
    tokens = std::max<int64_t>(1, query_start_loc.back());
    const int64_t elements = tokens * c.q_heads * c.head_dim;
    queries.resize(static_cast<size_t>(elements * dtype_size(c.query_dtype)));
    fill_random(queries.data(), c.query_dtype, static_cast<size_t>(elements), 7);
    out.assign(static_cast<size_t>(elements * dtype_size(c.out_dtype)), 0);
    rpa_attention_args_init(&args);
    args.queries = tensor(queries.data(), c.query_dtype, {tokens, c.q_heads, c.head_dim});
    args.kv_pages = tensor(pool.data(), c.kv_dtype, {pool_pages, page, 2 * c.kv_heads, c.head_dim});
    if (is_quantised_dtype(c.kv_dtype))
      args.k_scale = args.v_scale = tensor(const_cast<float*>(kv_scale(c.kv_dtype)), RPA_DTYPE_F32, {1});
    args.context_lens = tensor(context_lens.data(), RPA_DTYPE_I32, {seqs});
    args.block_tables = tensor(block_tables.data(), RPA_DTYPE_I32, {seqs, width});
    args.query_start_loc = tensor(query_start_loc.data(), RPA_DTYPE_I32, {seqs + 1});
    args.num_seqs = seqs;
    args.out = tensor(out.data(), c.out_dtype, {tokens, c.q_heads, c.head_dim});
  }
  int64_t row_elements() const { return config.q_heads * config.head_dim; }
};

// Rows checked against the reference: up to 8 sequences spread over the batch, and in each its first,
// middle and last query. Each becomes a one-query sequence of the same pages whose context ends at the
// query, so the reference computes exactly those rows.
struct Sample {
  std::vector<int32_t> context_lens;
  std::vector<int64_t> rows;  // the full problem's token of each sample row
  std::vector<std::vector<int32_t>> tables;
};

Sample sample_of(const Shape& shape, const Problem& full) {
  Sample sample;
  const size_t seqs = shape.q_lens.size();
  const size_t step = std::max<size_t>(1, seqs / 8);
  for (size_t s = 0; s < seqs; s += step) {
    const int32_t q_len = shape.q_lens[s];
    std::vector<int32_t> picks{0, q_len / 2, q_len - 1};
    std::sort(picks.begin(), picks.end());
    picks.erase(std::unique(picks.begin(), picks.end()), picks.end());
    for (int32_t i : picks) {
      if (i < 0) continue;
      sample.context_lens.push_back(shape.context_lens[s] - q_len + i + 1);
      sample.rows.push_back(full.query_start_loc[s] + i);
      sample.tables.emplace_back(full.block_tables.begin() + static_cast<int64_t>(s) * full.width,
                                 full.block_tables.begin() + static_cast<int64_t>(s + 1) * full.width);
    }
  }
  return sample;
}

// The sample as a problem of its own over the same pool, with the full problem's query rows.
struct SampleProblem {
  std::vector<int32_t> context_lens, block_tables, query_start_loc;
  std::vector<uint8_t> queries, out;
  double flops = 0;
  rpa_attention_args args;

  SampleProblem(const Sample& sample, const Problem& full) {
    const Config& c = full.config;
    const int64_t n = static_cast<int64_t>(sample.rows.size());
    const int64_t row_bytes = full.row_elements() * dtype_size(c.query_dtype);
    for (int64_t r = 0; r < n; ++r) {
      context_lens.push_back(sample.context_lens[r]);
      query_start_loc.push_back(static_cast<int32_t>(r));
      block_tables.insert(block_tables.end(), sample.tables[r].begin(), sample.tables[r].end());
      queries.insert(queries.end(), full.queries.begin() + sample.rows[r] * row_bytes,
                     full.queries.begin() + (sample.rows[r] + 1) * row_bytes);
      flops += 4.0 * c.head_dim * c.q_heads * context_lens.back();
    }
    query_start_loc.push_back(static_cast<int32_t>(n));
    out.assign(static_cast<size_t>(n * full.row_elements() * dtype_size(c.out_dtype)), 0);
    rpa_attention_args_init(&args);
    args.queries = tensor(queries.data(), c.query_dtype, {n, c.q_heads, c.head_dim});
    args.kv_pages = full.args.kv_pages;
    args.k_scale = full.args.k_scale, args.v_scale = full.args.v_scale;
    args.context_lens = tensor(context_lens.data(), RPA_DTYPE_I32, {n});
    args.block_tables = tensor(block_tables.data(), RPA_DTYPE_I32, {n, full.width});
    args.query_start_loc = tensor(query_start_loc.data(), RPA_DTYPE_I32, {n + 1});
    args.num_seqs = static_cast<int32_t>(n);
    args.out = tensor(out.data(), c.out_dtype, {n, c.q_heads, c.head_dim});
  }
};

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

// A context plus, for the gpu backend, device copies of the pool (made once).
struct Engine {
  rpa_backend backend;
  int threads = 0;
  rpa_context* context = nullptr;
  void* device_pool = nullptr;

  Engine(rpa_backend which, int num_threads) : backend(which) {
    rpa_context_options options;
    rpa_context_options_init(&options);
    options.backend = which;
    options.num_threads = num_threads;
    check(rpa_context_create(&options, &context), std::string("creating a ") + rpa_backend_string(which) + " context");
    int32_t resolved = 0;
    check(rpa_context_get_num_threads(context, &resolved), "asking the thread count");
    threads = resolved;
  }
  ~Engine() {
    if (device_pool) rpa_device_free(context, device_pool);
    rpa_context_destroy(context);
  }
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;
  bool on_device() const { return backend == RPA_BACKEND_GPU; }
};

// Device buffers of one problem for the gpu backend; args rewritten to point at them.
struct DeviceProblem {
  Engine& engine;
  void* queries = nullptr;
  void* out = nullptr;
  rpa_attention_args args;

  DeviceProblem(Engine& e, const Problem& p, const HugeBuffer& pool) : engine(e), args(p.args) {
    if (!engine.device_pool) {
      check(rpa_device_alloc(engine.context, pool.size(), &engine.device_pool), "allocating the device KV pool");
      check(rpa_device_copy(engine.context, engine.device_pool, pool.data(), pool.size(), RPA_COPY_HOST_TO_DEVICE),
            "copying the KV pool");
    }
    check(rpa_device_alloc(engine.context, p.queries.size(), &queries), "allocating device queries");
    check(rpa_device_alloc(engine.context, p.out.size(), &out), "allocating device output");
    check(rpa_device_copy(engine.context, queries, p.queries.data(), p.queries.size(), RPA_COPY_HOST_TO_DEVICE),
          "copying queries");
    args.queries.data = queries;
    args.kv_pages.data = engine.device_pool;
    args.out.data = out;
    args.memory = RPA_MEMORY_DEVICE;
    args.synchronize = 1;
  }
  ~DeviceProblem() {
    rpa_device_free(engine.context, queries);
    rpa_device_free(engine.context, out);
    for (void* device : metadata) rpa_device_free(engine.context, device);
  }
  std::vector<void*> metadata;
  // Moves the metadata to the device too (rpa_attention_args.metadata_memory), bounded by its exact maxima.
  void put_metadata(const Problem& p) {
    for (auto [tensor, host] : {std::pair{&args.context_lens, &p.context_lens}, std::pair{&args.block_tables, &p.block_tables},
                                std::pair{&args.query_start_loc, &p.query_start_loc}}) {
      const size_t bytes = host->size() * sizeof(int32_t);
      void* device = nullptr;
      check(rpa_device_alloc(engine.context, bytes, &device), "allocating device metadata");
      check(rpa_device_copy(engine.context, device, host->data(), bytes, RPA_COPY_HOST_TO_DEVICE), "copying metadata");
      metadata.push_back(tensor->data = device);
    }
    args.metadata_memory = RPA_MEMORY_DEVICE;
    for (size_t s = 0; s + 1 < p.query_start_loc.size(); ++s) {
      args.max_query_len = std::max(args.max_query_len, p.query_start_loc[s + 1] - p.query_start_loc[s]);
      args.max_context_len = std::max(args.max_context_len, p.context_lens[s]);
    }
  }
  void read_out(std::vector<uint8_t>& host) {
    check(rpa_device_copy(engine.context, host.data(), out, host.size(), RPA_COPY_DEVICE_TO_HOST),
          "copying the output back");
  }
};

// The device's bandwidth: a device-to-device copy of `bytes`, counting its reads and writes.
double device_bandwidth(Engine& engine, size_t bytes, int repeats) {
  void *a = nullptr, *b = nullptr;
  check(rpa_device_alloc(engine.context, bytes, &a), "allocating a copy source");
  check(rpa_device_alloc(engine.context, bytes, &b), "allocating a copy target");
  std::vector<double> rates;
  for (int r = 0; r <= repeats; ++r) {
    const auto start = std::chrono::steady_clock::now();
    check(rpa_device_copy(engine.context, b, a, bytes, RPA_COPY_DEVICE_TO_DEVICE), "device copy");
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (r > 0) rates.push_back(2.0 * static_cast<double>(bytes) / seconds);  // the first copy warms up
  }
  rpa_device_free(engine.context, a);
  rpa_device_free(engine.context, b);
  return median(rates);
}

// Planned runs a graph holds, as one step of a model's 32 layers would.
constexpr int kGraphRuns = 32;

// The per-call time of kGraphRuns planned runs of `args` (device memory) captured in one CUDA graph: the
// median over `repeats` replays of a replay's time (device events around it) divided by kGraphRuns.
// 0 where the CUDA driver is absent (AMD: HIP graphs are not measured).
double graph_replay_ms(Engine& engine, rpa_attention_args args, int repeats) {
  static cuda_graph::Driver driver;
  static const bool loaded = driver.load();
  if (!loaded) return 0;
  struct Resources {
    cuda_graph::Driver& driver;
    rpa_plan* plan = nullptr;
    void *stream = nullptr, *graph = nullptr, *exec = nullptr, *start = nullptr, *end = nullptr;
    ~Resources() {
      if (exec) driver.exec_destroy(exec);
      if (graph) driver.graph_destroy(graph);
      if (start) driver.event_destroy(start);
      if (end) driver.event_destroy(end);
      rpa_plan_destroy(plan);
      if (stream) driver.stream_destroy(stream);
    }
  } r{driver};
  check_cuda(driver.stream_create(&r.stream, cuda_graph::Driver::kNonBlocking), "cuStreamCreate");
  args.stream = r.stream;
  args.synchronize = 0;
  check(rpa_plan_create(engine.context, &args, &r.plan), "plan for the graph");
  check(rpa_plan_run(r.plan, &args), "planned run before the capture");
  check_cuda(driver.stream_synchronize(r.stream), "cuStreamSynchronize");
  check_cuda(driver.begin_capture(r.stream, cuda_graph::Driver::kThreadLocalCapture), "cuStreamBeginCapture");
  rpa_status status = RPA_STATUS_OK;
  for (int i = 0; i < kGraphRuns && status == RPA_STATUS_OK; ++i) status = rpa_plan_run(r.plan, &args);
  const std::string message = status == RPA_STATUS_OK ? "" : rpa_last_error();
  check_cuda(driver.end_capture(r.stream, &r.graph), "cuStreamEndCapture");
  if (status != RPA_STATUS_OK) throw std::runtime_error("planned run in a graph capture: " + message);
  check_cuda(driver.instantiate(&r.exec, r.graph, 0), "cuGraphInstantiateWithFlags");
  check_cuda(driver.event_create(&r.start, 0), "cuEventCreate");
  check_cuda(driver.event_create(&r.end, 0), "cuEventCreate");
  check_cuda(driver.launch(r.exec, r.stream), "cuGraphLaunch");  // the first replay uploads the graph
  std::vector<double> ms;
  for (int i = 0; i < repeats; ++i) {
    check_cuda(driver.event_record(r.start, r.stream), "cuEventRecord");
    check_cuda(driver.launch(r.exec, r.stream), "cuGraphLaunch");
    check_cuda(driver.event_record(r.end, r.stream), "cuEventRecord");
    check_cuda(driver.event_synchronize(r.end), "cuEventSynchronize");
    float elapsed = 0;
    check_cuda(driver.event_elapsed(&elapsed, r.start, r.end), "cuEventElapsedTime");
    ms.push_back(elapsed / kGraphRuns);
  }
  return median(ms);
}

class Progress {
 public:
  explicit Progress(int total) : total_(total), shown_(isatty(STDERR_FILENO) != 0) {}
  void step(const std::string& what) {
    ++done_;
    if (shown_) std::fprintf(stderr, "\r[%d/%d] %s\033[K", done_, total_, what.c_str());
  }
  ~Progress() {
    if (shown_) std::fprintf(stderr, "\r\033[K");
  }

 private:
  int total_, done_ = 0;
  bool shown_;
};

// Largest error the sample may show against the reference: within two units in the last place of the
// output dtype (bf16: 2^-7 relative, f16: 2^-10) plus f32 rounding.
double allowed_error(rpa_dtype out_dtype, double want) {
  const int ulp_exponent = out_dtype == RPA_DTYPE_BF16 ? -7 : out_dtype == RPA_DTYPE_F16 ? -10 : -20;
  return 2e-5 + std::ldexp(std::abs(want), ulp_exponent);
}

// The products the simd backend's prefill items take in this process (simd/tiles.h): "amx" when the
// batch has prefill sequences of 16-bit queries and KV and the backend uses AMX, "emulated" when
// RPA_SIMD_TILES asks for the tile product's scalar twin, else "fma".
std::string cpu_path(rpa_dtype query_dtype, rpa_dtype kv_dtype, bool prefill) {
  const auto sixteen_bit = [](rpa_dtype dtype) { return dtype == RPA_DTYPE_BF16 || dtype == RPA_DTYPE_F16; };
  const simd::TileProduct tiles = simd::tile_product_in_use();
  if (!prefill || !sixteen_bit(query_dtype) || !sixteen_bit(kv_dtype) || tiles == nullptr) return "fma";
  return tiles == simd::amx_tile_product() ? "amx" : "emulated";
}

// The AMX peak when the simd backend uses AMX here (the peak its prefill rows are set against).
double amx_peak(int threads) {
  return simd::tile_product_in_use() == simd::amx_tile_product() ? simd::amx_peak_flops(threads) : 0;
}

std::vector<rpa_backend> selected_backends(const Options& options) {
  std::vector<rpa_backend> backends;
  for (rpa_backend b : {RPA_BACKEND_SIMD, RPA_BACKEND_GPU}) {
    const bool named = options.backends.empty() ||
                       std::find(options.backends.begin(), options.backends.end(), rpa_backend_string(b)) != options.backends.end();
    if (named && rpa_backend_available(b)) backends.push_back(b);
  }
  return backends;
}

// A case file on every selected backend: timed in host memory (the gpu backend's figure includes its
// copies), checked in full by `rpa check`'s comparison.
void run_case_file(const Options& options, const std::vector<rpa_backend>& backends, Measurements& result) {
  const golden::Case c = golden::load_case(options.case_file);
  golden::Candidate reference = golden::run_case(c, RPA_BACKEND_REFERENCE, c.queries.dtype, false);
  int64_t tokens = 0;
  double kv_bytes = 0, flops = 0;
  bool prefill = false;
  const double token_kv_bytes = 2.0 * c.kv_heads() * c.head_dim() * dtype_size(c.kv_dtype());
  for (int32_t s = 0; s < c.num_seqs; ++s) {
    const int64_t context = c.context_lens.int_at(s);
    const int64_t q_len = c.query_start_loc.int_at(s + 1) - c.query_start_loc.int_at(s);
    kv_bytes += context * token_kv_bytes;
    prefill = prefill || q_len > 1;
    for (int64_t i = 0; i < q_len; ++i) {
      const int64_t pos = context - q_len + i;
      const int64_t first = c.sliding_window > 0 ? std::max<int64_t>(0, pos - c.sliding_window + 1) : 0;
      flops += 4.0 * c.head_dim() * c.q_heads() * static_cast<double>(pos - first + 1);
    }
    tokens += q_len;
  }
  Engine reference_engine(RPA_BACKEND_REFERENCE, 1);
  rpa_attention_args reference_args = golden::args_for(c, reference.output, nullptr);
  double reference_ms = 0;
  check(rpa_time_attention(reference_engine.context, &reference_args, 1, &reference_ms), "reference run");
  const golden::Array& pool = c.combined() ? c.kv_pages : c.k_cache;
  const double bandwidth = read_bandwidth(pool.bytes.data(), pool.bytes.size(), result.machine_threads, 5);
  for (rpa_backend backend : backends) {
    Engine engine(backend, options.threads);
    golden::Candidate candidate;
    candidate.output = golden::Array::zeros(c.queries.dtype, c.queries.shape);
    rpa_attention_args args = golden::args_for(c, candidate.output, nullptr);
    std::vector<double> ms(static_cast<size_t>(options.repeats));
    check(rpa_time_attention(engine.context, &args, options.repeats, ms.data()), "timing the case");
    const golden::Report report = golden::check(c, candidate);
    Row row{"case", options.case_file, rpa_backend_string(backend), engine.threads, {}};
    row.ms = median(ms);
    row.kv_bytes = kv_bytes;
    row.flops = flops;
    row.bandwidth = bandwidth;
    row.peak = engine.on_device() ? 0 : result.fma_peak;
    row.reference_flops_rate = flops / (reference_ms * 1e-3);
    row.sample_rows = row.total_rows = tokens;
    row.max_error = report.max_abs_error;
    row.valid = report.pass;
    result.rows.push_back(row);
  }
}

}  // namespace

bool Measurements::all_valid() const {
  return std::all_of(rows.begin(), rows.end(), [](const Row& r) { return r.valid; });
}

void check_options(const Options& options) {
  for (const std::string& w : options.workloads)
    if (std::find(workload_names().begin(), workload_names().end(), w) == workload_names().end())
      throw UsageError("unknown workload '" + w + "' (known: W1 W2 W3 context threads)");
  for (const std::string& name : options.backends) {
    rpa_backend backend = RPA_BACKEND_AUTO;
    for (rpa_backend b : {RPA_BACKEND_REFERENCE, RPA_BACKEND_SIMD, RPA_BACKEND_GPU})
      if (name == rpa_backend_string(b)) backend = b;
    if (backend == RPA_BACKEND_AUTO || backend == RPA_BACKEND_REFERENCE)
      throw UsageError("unknown backend '" + name + "' (the bench times simd and gpu; the reference checks them)");
    if (!rpa_backend_available(backend)) {
      rpa_context_options context_options;
      rpa_context_options_init(&context_options);
      context_options.backend = backend;
      rpa_context* context = nullptr;
      rpa_context_create(&context_options, &context);  // fails, leaving the reason in rpa_last_error()
      throw UsageError("backend " + name + " is unavailable: " + rpa_last_error());
    }
  }
  if (options.workloads.empty()) throw UsageError("no workload named");
  if (!options.case_file.empty()) {
    try {
      golden::load_case(options.case_file);
    } catch (const std::exception& e) {
      throw UsageError(options.case_file + ": " + e.what());
    }
  }
  const Config& c = options.config;
  if (c.q_heads <= 0 || c.kv_heads <= 0 || c.q_heads % c.kv_heads != 0)
    throw UsageError("--q-heads must be a positive multiple of --kv-heads");
  if (c.head_dim <= 0 || c.page_size <= 0) throw UsageError("--head-dim and --page-size must be positive");
}

Measurements run(const Options& options) {
  check_options(options);
  const Config& config = options.config;
  Measurements result;
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  result.cores = cores;
  const std::vector<rpa_backend> backends = selected_backends(options);
  result.machine_threads = options.threads > 0 ? options.threads : cores;
  if (!options.case_file.empty()) {
    result.fma_peak = fma_peak_flops(result.machine_threads);
    result.amx_peak = amx_peak(result.machine_threads);
    run_case_file(options, backends, result);
    return result;
  }
  const std::vector<Shape> shapes = shapes_for(options.workloads, options.contexts);
  const bool thread_sweep = std::find(options.workloads.begin(), options.workloads.end(), "threads") != options.workloads.end();

  // One KV pool for every workload; each uses its first pages, in a shuffled order.
  int64_t pool_pages = 1;
  for (const Shape& s : shapes) {
    int64_t pages = 0;
    for (int32_t c : s.context_lens) pages += (c + config.page_size - 1) / config.page_size;
    pool_pages = std::max(pool_pages, pages);
  }
  const size_t pool_bytes = static_cast<size_t>(pool_pages * config.page_size * config.token_kv_bytes());
  Progress progress(2 + static_cast<int>(shapes.size() * (1 + backends.size())) + (thread_sweep ? cores : 0));
  progress.step("filling the KV pool (" + std::to_string(pool_bytes >> 20) + " MiB)");
  HugeBuffer pool(pool_bytes);
  fill_random(pool.data(), config.kv_dtype, pool_bytes / dtype_size(config.kv_dtype), 1);
  std::vector<int32_t> page_order(static_cast<size_t>(pool_pages));
  const int64_t stride = std::gcd<int64_t>(7919, pool_pages) == 1 ? 7919 : 1;  // a permutation either way
  for (int64_t i = 0; i < pool_pages; ++i) page_order[i] = static_cast<int32_t>((i * stride) % pool_pages);

  progress.step("measuring the FMA and AMX peaks");
  Engine reference_engine(RPA_BACKEND_REFERENCE, 1);
  result.fma_peak = fma_peak_flops(result.machine_threads);
  result.amx_peak = amx_peak(result.machine_threads);

  std::map<std::string, double> host_bandwidth;  // per workload
  for (const Shape& shape : shapes) {
    Problem problem(config, shape, pool, pool_pages, page_order);
    const Sample sample = sample_of(shape, problem);
    SampleProblem reference(sample, problem);
    progress.step(shape.name + ": reference on " + std::to_string(sample.rows.size()) + " sample rows");
    double reference_ms = 0;
    check(rpa_time_attention(reference_engine.context, &reference.args, 1, &reference_ms), "reference run");
    const double reference_rate = reference.flops / (reference_ms * 1e-3);
    const size_t kv_bytes = static_cast<size_t>(problem.kv_bytes);
    host_bandwidth[shape.name] = read_bandwidth(pool.data(), kv_bytes, result.machine_threads, 5);

    // Per-call time of a planned run: whole runs of one plan queued back to back (no waiting between).
    auto planned = [&](Engine& engine, rpa_attention_args args) {
      args.synchronize = 0;
      rpa_plan* plan = nullptr;
      check(rpa_plan_create(engine.context, &args, &plan), "plan");
      std::vector<double> ms(static_cast<size_t>(options.repeats));
      const rpa_status status = rpa_plan_time(plan, &args, options.repeats, ms.data());
      rpa_plan_destroy(plan);
      check(status, "planned timing");
      return median(ms);
    };

    auto measure = [&](Engine& engine) {
      Row row{shape.name, shape.what, rpa_backend_string(engine.backend), engine.threads, {}};
      row.kv_bytes = problem.kv_bytes;
      row.flops = problem.flops;
      row.path = engine.on_device() ? "" : cpu_path(config.query_dtype, config.kv_dtype,
                                                    std::any_of(shape.q_lens.begin(), shape.q_lens.end(), [](int32_t q) { return q > 1; }));
      row.peak = engine.on_device() ? 0 : row.path == "amx" ? result.amx_peak : row.path == "fma" ? result.fma_peak : 0;
      row.reference_flops_rate = reference_rate;
      row.sample_rows = static_cast<int64_t>(sample.rows.size());
      row.total_rows = problem.query_start_loc.back();
      std::vector<double> ms(static_cast<size_t>(options.repeats));
      // Checks the sample rows of problem.out against the reference (row.valid stays false on any error).
      const auto check_sample = [&](bool& valid) {
        valid = true;
        const int64_t n = problem.row_elements();
        for (size_t r = 0; r < sample.rows.size(); ++r)
          for (int64_t i = 0; i < n; ++i) {
            const float got = load_float(problem.out.data(), config.out_dtype, sample.rows[r] * n + i);
            const float want = load_float(reference.out.data(), config.out_dtype, static_cast<int64_t>(r) * n + i);
            const double error = std::isnan(got) ? INFINITY : std::abs(double(got) - want);
            row.max_error = std::max(row.max_error, error);
            if (error > allowed_error(config.out_dtype, want)) valid = false;
          }
      };
      bool device_metadata_valid = true;
      if (engine.on_device()) {
        DeviceProblem with_metadata(engine, problem, pool);
        with_metadata.put_metadata(problem);
        std::fill(problem.out.begin(), problem.out.end(), uint8_t{0xff});
        check(rpa_attention(engine.context, &with_metadata.args), "gpu run with device metadata");
        with_metadata.read_out(problem.out);
        check_sample(device_metadata_valid);
        row.device_metadata_ms = planned(engine, with_metadata.args);
        row.graph_ms = graph_replay_ms(engine, with_metadata.args, options.repeats);
      }
      std::fill(problem.out.begin(), problem.out.end(), uint8_t{0xff});  // NaN: every row must be written
      if (engine.on_device()) {
        DeviceProblem device(engine, problem, pool);
        check(rpa_attention(engine.context, &device.args), "gpu run");
        device.read_out(problem.out);
        check(rpa_time_attention(engine.context, &device.args, options.repeats, ms.data()), "gpu timing");
        row.planned_ms = planned(engine, device.args);
        row.bandwidth = device_bandwidth(engine, kv_bytes, 5);
      } else {
        check(rpa_attention(engine.context, &problem.args), std::string(row.backend) + " run");
        check(rpa_time_attention(engine.context, &problem.args, options.repeats, ms.data()), "timing");
        row.planned_ms = planned(engine, problem.args);
        std::vector<double> calls(ms.size());
        for (double& call : calls) {
          const auto start = std::chrono::steady_clock::now();
          check(rpa_attention(engine.context, &problem.args), std::string(row.backend) + " run");
          call = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
        }
        row.one_call_ms = median(calls);
        row.bandwidth = host_bandwidth[shape.name];
      }
      row.ms = median(ms);
      check_sample(row.valid);
      row.valid = row.valid && device_metadata_valid;
      return row;
    };

    for (rpa_backend backend : backends) {
      progress.step(shape.name + " on " + rpa_backend_string(backend));
      Engine engine(backend, options.threads);
      result.rows.push_back(measure(engine));
    }
    if (thread_sweep && shape.name == "W1" && std::find(backends.begin(), backends.end(), RPA_BACKEND_SIMD) != backends.end())
      for (int t = 1; t <= cores; ++t) {
        progress.step("W1 thread sweep: " + std::to_string(t) + " thread(s)");
        Engine engine(RPA_BACKEND_SIMD, t);
        Row row = measure(engine);
        row.workload = "W1 threads";
        result.rows.push_back(row);
      }
  }
  return result;
}

}  // namespace rpa::bench
