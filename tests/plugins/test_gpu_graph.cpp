// Planned runs with device memory are capture-safe: 32 layer calls of one plan are captured in one CUDA
// graph (thread-local capture mode, so an allocation, a synchronous copy or a synchronisation inside a
// run fails the capture), the graph is replayed, the layers' queries and KV are rewritten in place and it
// is replayed again; every replay must equal the uncaptured runs bitwise and the reference within 2e-5.
// Device metadata: a graph replayed after the metadata is rewritten in place follows it, and a broken rule
// skips its sequence and comes back from rpa_plan_get_error with host validation's message.
// Also checks rpa_merge_states with device memory against the host merge. The CUDA driver API is
// loaded with dlopen (bench/cuda_graph.h, shared with rpa bench), so the test builds without CUDA headers;
// it skips without an NVIDIA GPU.
#define BOOST_TEST_MODULE gpu_graph
#define BOOST_TEST_NO_MAIN
#include <boost/test/unit_test.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <limits>
#include <random>
#include <tuple>
#include <utility>
#include <vector>

#include "bench/cuda_graph.h"
#include "core/dtype.h"
#include "tests/support/case.h"

using namespace rpa::testing;

namespace {

rpa::cuda_graph::Driver driver;
constexpr int kThreadLocalCapture = rpa::cuda_graph::Driver::kThreadLocalCapture;
constexpr int kLayers = 32;

struct Context : OwnedContext {
  Context() : OwnedContext(RPA_BACKEND_GPU) {}
  void* upload(const void* host, size_t bytes) {
    void* device = nullptr;
    BOOST_TEST_REQUIRE(rpa_device_alloc(context, bytes, &device) == RPA_STATUS_OK, rpa_last_error());
    BOOST_TEST_REQUIRE(rpa_device_copy(context, device, host, bytes, RPA_COPY_HOST_TO_DEVICE) == RPA_STATUS_OK);
    return device;
  }
  std::vector<uint8_t> download(const void* device, size_t bytes) {
    std::vector<uint8_t> host(bytes);
    BOOST_TEST_REQUIRE(rpa_device_copy(context, host.data(), device, bytes, RPA_COPY_DEVICE_TO_HOST) == RPA_STATUS_OK);
    return host;
  }
};

// A stream of the test's own and one graph captured on it (thread-local capture mode, so an allocation, a
// synchronous copy or a synchronisation inside a run fails the capture).
class CapturedGraph {
 public:
  CapturedGraph() { BOOST_TEST_REQUIRE(driver.stream_create(&stream_, 1 /* non-blocking */) == 0); }
  ~CapturedGraph() {
    if (exec_) driver.exec_destroy(exec_);
    if (graph_) driver.graph_destroy(graph_);
    if (stream_) driver.stream_destroy(stream_);
  }
  CapturedGraph(const CapturedGraph&) = delete;
  CapturedGraph& operator=(const CapturedGraph&) = delete;
  void* stream() const { return stream_; }
  // Captures the runs `record` issues on stream(); it returns the first failing status (the test fails with
  // that run's message) or RPA_STATUS_OK.
  template <class Record>
  void capture(Record record) {
    BOOST_TEST_REQUIRE(driver.begin_capture(stream_, kThreadLocalCapture) == 0);
    const rpa_status status = record();
    const std::string message = status == RPA_STATUS_OK ? "" : rpa_last_error();
    BOOST_TEST_REQUIRE(driver.end_capture(stream_, &graph_) == 0);
    BOOST_TEST_REQUIRE(status == RPA_STATUS_OK, "a run failed while capturing: " << message);
    BOOST_TEST_REQUIRE(driver.instantiate(&exec_, graph_, 0) == 0);
  }
  void replay() {
    BOOST_TEST_REQUIRE(driver.launch(exec_, stream_) == 0);
    BOOST_TEST_REQUIRE(driver.stream_synchronize(stream_) == 0);
  }

 private:
  void* stream_ = nullptr;
  void* graph_ = nullptr;
  void* exec_ = nullptr;
};

// A mixed batch (decodes with split long contexts, a chunked prefill), bf16 in and out.
// Sequences of 1, 1, 9 and 1 query tokens (with `decodes_only` one each).
Case layer_case(uint64_t seed, bool decodes_only = false) {
  RandomSpec spec;
  spec.q_lens = {1, 1, decodes_only ? 1 : 9, 1};
  spec.context_lens = {40, 1800, 120, 700};
  spec.num_q_heads = 8, spec.num_kv_heads = 2, spec.head_dim = 64, spec.page_size = 16, spec.padding_tokens = 2;
  Case c = random_case(spec, 77);  // one metadata for every layer
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& x : c.queries) x = normal(rng);
  for (float& x : c.kv) x = normal(rng);
  c.query_dtype = c.kv_dtype = c.out_dtype = RPA_DTYPE_BF16;
  c.round_to_dtypes();
  return c;
}

size_t tensor_bytes(const rpa_tensor& t) {
  size_t count = 1;
  for (int i = 0; i < t.ndim; ++i) count *= static_cast<size_t>(t.shape[i]);
  return count * (t.dtype == RPA_DTYPE_BF16 ? 2 : 4);
}

// The slots device metadata runs on (launch.cpp): decode slots alone (one-token bounds; the metadata check
// beside them); a direct grid (DeviceGrid::direct: the tests' bound of 12 query tokens gives no more slots
// than a list would), whose slots check their own sequence, one-token ones too; or prefill slots listed
// by prepare_metadata_kernel, decode slots beside them (RPA_GPU_DIRECT_SLOTS=0 when the context is made).
enum class Slots { decode, direct, listed };

// Sets RPA_GPU_DIRECT_SLOTS for the context made after it (SlotsContext).
struct DirectSlotsSetting {
  explicit DirectSlotsSetting(Slots slots) {
    if (slots == Slots::listed) setenv("RPA_GPU_DIRECT_SLOTS", "0", 1);
  }
};

// A context whose plugin lays device metadata out as `slots` asks.
struct SlotsContext : DirectSlotsSetting, Context {
  explicit SlotsContext(Slots slots) : DirectSlotsSetting(slots) { unsetenv("RPA_GPU_DIRECT_SLOTS"); }
};

const char* slots_name(Slots slots) {
  return slots == Slots::decode ? "decode slots alone" : slots == Slots::direct ? "direct slots" : "listed slots";
}

// One layer of layer_case with its queries, KV, out and lse in device memory (freed with the object);
// metadata_on_device() moves the metadata there too.
struct DeviceLayer {
  Context& gpu;
  Case c;
  Prepared host;
  rpa_attention_args args;
  void *context_lens = nullptr, *block_tables = nullptr, *query_start_loc = nullptr;
  std::vector<void*> owned;

  DeviceLayer(Context& gpu, uint64_t seed, bool decodes_only = false)
      : DeviceLayer(gpu, layer_case(seed, decodes_only)) {}
  DeviceLayer(Context& gpu, Case layer) : gpu(gpu), c(std::move(layer)), host(prepare(c)) {
    args = host.args;
    for (rpa_tensor* t : {&args.queries, &args.kv_pages, &args.out, &args.lse})
      owned.push_back(t->data = gpu.upload(t->data, tensor_bytes(*t)));
    args.memory = RPA_MEMORY_DEVICE;
  }
  ~DeviceLayer() {
    for (void* p : owned) rpa_device_free(gpu.context, p);
  }
  DeviceLayer(const DeviceLayer&) = delete;
  DeviceLayer& operator=(const DeviceLayer&) = delete;

  // Planned with bounds: layer_case's sequences have at most 9 (and other_metadata's 8) query tokens;
  // one-token bounds for decode slots alone (Slots).
  void metadata_on_device(Slots slots) {
    owned.push_back(context_lens = args.context_lens.data = gpu.upload(args.context_lens.data, tensor_bytes(args.context_lens)));
    owned.push_back(block_tables = args.block_tables.data = gpu.upload(args.block_tables.data, tensor_bytes(args.block_tables)));
    owned.push_back(query_start_loc = args.query_start_loc.data =
                        gpu.upload(args.query_start_loc.data, tensor_bytes(args.query_start_loc)));
    args.metadata_memory = RPA_MEMORY_DEVICE;
    args.max_query_len = slots == Slots::decode ? 1 : 12;
    args.synchronize = 1;  // outputs are read right after uncaptured runs
  }
  // Writes the metadata of `m` (same shapes) over the device metadata, in place.
  void write_metadata(const Case& m) {
    for (auto [device, host, count] : {std::tuple{context_lens, m.context_lens.data(), m.context_lens.size()},
                                      std::tuple{block_tables, m.block_tables.data(), m.block_tables.size()},
                                      std::tuple{query_start_loc, m.query_start_loc.data(), m.query_start_loc.size()}})
      BOOST_TEST_REQUIRE(rpa_device_copy(gpu.context, device, host, count * 4, RPA_COPY_HOST_TO_DEVICE) == RPA_STATUS_OK);
  }
  std::vector<uint8_t> out() { return gpu.download(args.out.data, tensor_bytes(args.out)); }
};

void expect_matches_reference(const Case& c, const std::vector<uint8_t>& out, const std::string& what) {
  const Result expected = run_case(c, RPA_BACKEND_REFERENCE);
  BOOST_TEST_REQUIRE(expected.status == RPA_STATUS_OK);
  size_t bad = 0;
  for (size_t i = 0; i < expected.out.size(); ++i) {
    const float got = rpa::load_float(out.data(), RPA_DTYPE_BF16, static_cast<int64_t>(i));
    if (std::abs(got - expected.out[i]) > 2e-5 + std::ldexp(1.0, -7) * std::abs(expected.out[i])) ++bad;
  }
  BOOST_TEST(bad == 0u, what << ": " << bad << " elements differ from the reference");
}

}  // namespace

BOOST_AUTO_TEST_CASE(thirty_two_planned_layers_in_one_graph) {
  Context gpu;
  CapturedGraph graph;
  std::deque<DeviceLayer> layers;
  for (int l = 0; l < kLayers; ++l) {
    layers.emplace_back(gpu, 1000 + l);
    layers.back().args.stream = graph.stream();
  }
  rpa_plan* plan = nullptr;
  BOOST_TEST_REQUIRE(rpa_plan_create(gpu.context, &layers[0].args, &plan) == RPA_STATUS_OK, rpa_last_error());
  const auto run_all = [&] {
    for (DeviceLayer& layer : layers)
      if (const rpa_status status = rpa_plan_run(plan, &layer.args); status != RPA_STATUS_OK) return status;
    return RPA_STATUS_OK;
  };

  // Uncaptured runs: the bitwise expectation.
  BOOST_TEST_REQUIRE(run_all() == RPA_STATUS_OK, rpa_last_error());
  BOOST_TEST_REQUIRE(driver.stream_synchronize(graph.stream()) == 0);
  std::vector<std::vector<uint8_t>> direct;
  for (DeviceLayer& layer : layers) direct.push_back(layer.out());
  expect_matches_reference(layers[0].c, direct[0], "layer 0, uncaptured");

  graph.capture(run_all);
  for (DeviceLayer& layer : layers) {  // the graph must write every output again
    std::vector<uint8_t> poison(direct[0].size(), 0xff);
    void* scratch = gpu.upload(poison.data(), poison.size());
    BOOST_TEST_REQUIRE(rpa_device_copy(gpu.context, layer.args.out.data, scratch, poison.size(),
                                       RPA_COPY_DEVICE_TO_DEVICE) == RPA_STATUS_OK);
    BOOST_TEST_REQUIRE(rpa_device_free(gpu.context, scratch) == RPA_STATUS_OK);
  }
  graph.replay();
  for (int l = 0; l < kLayers; ++l) BOOST_TEST((layers[l].out() == direct[l]), "replay of layer " << l);

  // New queries and KV in the same buffers, then replay: the graph reads them.
  for (int l = 0; l < kLayers; ++l) {
    DeviceLayer& layer = layers[l];
    layer.c = layer_case(5000 + l);
    const Prepared fresh = prepare(layer.c);
    BOOST_TEST_REQUIRE(rpa_device_copy(gpu.context, layer.args.queries.data, fresh.queries.data(), fresh.queries.size(),
                                       RPA_COPY_HOST_TO_DEVICE) == RPA_STATUS_OK);
    BOOST_TEST_REQUIRE(rpa_device_copy(gpu.context, layer.args.kv_pages.data, fresh.kv.data(), fresh.kv.size(),
                                       RPA_COPY_HOST_TO_DEVICE) == RPA_STATUS_OK);
  }
  graph.replay();
  for (int l = 0; l < kLayers; ++l)
    expect_matches_reference(layers[l].c, layers[l].out(), "replay with new data, layer " + std::to_string(l));
  rpa_plan_destroy(plan);
}

BOOST_AUTO_TEST_CASE(merge_states_on_the_device_equals_the_host_merge) {
  Context gpu;
  const int64_t T = 5, H = 3, D = 40;
  std::mt19937_64 rng(4);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> out_a(T * H * D), out_b(T * H * D), lse_a(T * H), lse_b(T * H);
  for (float& x : out_a) x = normal(rng);
  for (float& x : out_b) x = normal(rng);
  for (int64_t i = 0; i < T * H; ++i) lse_a[i] = 3 * normal(rng), lse_b[i] = 3 * normal(rng);
  lse_a[0] = -INFINITY;                       // only b
  lse_b[1] = -INFINITY;                       // only a
  lse_a[2] = lse_b[2] = -INFINITY;            // neither: 0 and -inf
  for (int64_t d = 0; d < D; ++d) out_a[d] = NAN;  // a state without keys is not read
  rpa_merge_args args;
  rpa_merge_args_init(&args);
  const auto tensor3 = [&](void* data) { return rpa_tensor{data, RPA_DTYPE_F32, 3, {T, H, D}, {0}}; };
  const auto tensor2 = [&](void* data) { return rpa_tensor{data, RPA_DTYPE_F32, 2, {T, H}, {0}}; };
  std::vector<float> host_out(T * H * D), host_lse(T * H);
  args.out_a = tensor3(out_a.data()), args.out_b = tensor3(out_b.data()), args.out = tensor3(host_out.data());
  args.lse_a = tensor2(lse_a.data()), args.lse_b = tensor2(lse_b.data()), args.lse = tensor2(host_lse.data());
  BOOST_TEST_REQUIRE(rpa_merge_states(gpu.context, &args) == RPA_STATUS_OK, rpa_last_error());
  void* d_out_a = gpu.upload(out_a.data(), out_a.size() * 4);
  void* d_out_b = gpu.upload(out_b.data(), out_b.size() * 4);
  void* d_lse_a = gpu.upload(lse_a.data(), lse_a.size() * 4);
  void* d_lse_b = gpu.upload(lse_b.data(), lse_b.size() * 4);
  args.out_a = tensor3(d_out_a), args.out_b = tensor3(d_out_b), args.lse_a = tensor2(d_lse_a), args.lse_b = tensor2(d_lse_b);
  args.out = tensor3(d_out_a), args.lse = tensor2(d_lse_a);  // in place
  args.memory = RPA_MEMORY_DEVICE;
  args.synchronize = 1;
  BOOST_TEST_REQUIRE(rpa_merge_states(gpu.context, &args) == RPA_STATUS_OK, rpa_last_error());
  std::vector<uint8_t> got_out = gpu.download(d_out_a, host_out.size() * 4), got_lse = gpu.download(d_lse_a, host_lse.size() * 4);
  double worst = 0;
  for (size_t i = 0; i < host_out.size(); ++i)
    worst = std::max(worst, double(std::abs(reinterpret_cast<const float*>(got_out.data())[i] - host_out[i])));
  BOOST_TEST(worst <= 2e-6);
  const float* lse = reinterpret_cast<const float*>(got_lse.data());
  BOOST_TEST(lse[2] == -INFINITY);
  for (size_t i = 0; i < host_lse.size(); ++i)
    if (i != 2) BOOST_TEST(std::abs(lse[i] - host_lse[i]) <= 2e-6);
  for (int64_t d = 0; d < D; ++d) BOOST_TEST(reinterpret_cast<const float*>(got_out.data())[2 * D + d] == 0.0f);
  for (void* p : {d_out_a, d_out_b, d_lse_a, d_lse_b}) rpa_device_free(gpu.context, p);
}

namespace {

// The layer's case with other metadata of the same shapes: sequences of 2, 1, 1 and 8 tokens over contexts
// of 1500, 64, 1 and 300 keys, pages drawn from the whole pool, rows 12 and 13 padding.
Case other_metadata(Case c) {
  std::mt19937 rng(9);
  c.context_lens = {1500, 64, 1, 300};
  c.query_start_loc = {0, 2, 3, 4, 12};
  for (int32_t& entry : c.block_tables) entry = static_cast<int32_t>(rng() % c.num_pages);
  return c;
}

}  // namespace

// Metadata in device memory: a captured graph of planned runs is replayed after the metadata is rewritten
// in place, and each replay follows the metadata of its time, with direct and with listed prefill slots
// (metadata_on_device).
BOOST_AUTO_TEST_CASE(device_metadata_is_read_at_every_replay) {
  for (const Slots slots : {Slots::direct, Slots::listed}) {
    BOOST_TEST_CONTEXT(slots_name(slots)) {
      SlotsContext gpu(slots);
      CapturedGraph graph;
      DeviceLayer layer(gpu, 31);
      layer.metadata_on_device(slots);
      layer.args.stream = graph.stream();
      rpa_plan* plan = nullptr;
      BOOST_TEST_REQUIRE(rpa_plan_create(gpu.context, &layer.args, &plan) == RPA_STATUS_OK, rpa_last_error());
      BOOST_TEST_REQUIRE(rpa_plan_run(plan, &layer.args) == RPA_STATUS_OK, rpa_last_error());
      BOOST_TEST(rpa_plan_get_error(plan) == RPA_STATUS_OK, rpa_last_error());
      const std::vector<uint8_t> first = layer.out();
      expect_matches_reference(layer.c, first, "device metadata, uncaptured");

      // The one-call path reads the same device metadata.
      BOOST_TEST_REQUIRE(rpa_attention(gpu.context, &layer.args) == RPA_STATUS_OK, rpa_last_error());
      BOOST_TEST((layer.out() == first), "rpa_attention with device metadata differs from the plan's run");

      layer.args.synchronize = 0;
      graph.capture([&] {
        rpa_status status = RPA_STATUS_OK;
        for (int l = 0; l < kLayers && status == RPA_STATUS_OK; ++l) status = rpa_plan_run(plan, &layer.args);
        return status;
      });
      graph.replay();
      BOOST_TEST((layer.out() == first), "the replay differs from the uncaptured run");

      const Case updated = other_metadata(layer.c);
      layer.write_metadata(updated);
      graph.replay();
      expect_matches_reference(updated, layer.out(), "replay after the metadata was rewritten");
      BOOST_TEST(rpa_plan_get_error(plan) == RPA_STATUS_OK, rpa_last_error());
      rpa_plan_destroy(plan);
    }
  }
}

// A run of a device-metadata plan may pass other device arrays of the plan's shapes (rpa_plan_run): it
// follows them (its output is the reference's for their metadata, the plan's arrays unread), also
// captured in a graph, and rpa_plan_get_error reports a break from the latest run's arrays. Some but not
// all of the three, or other shapes, are refused naming the argument.
BOOST_AUTO_TEST_CASE(device_metadata_runs_may_read_other_arrays) {
  for (const Slots slots : {Slots::direct, Slots::listed}) {
    BOOST_TEST_CONTEXT(slots_name(slots)) {
      SlotsContext gpu(slots);
      CapturedGraph graph;
      DeviceLayer layer(gpu, 34);
      layer.metadata_on_device(slots);
      DeviceLayer moved(gpu, other_metadata(layer.c));  // the same queries and KV, other metadata
      moved.metadata_on_device(slots);
      rpa_plan* plan = nullptr;
      BOOST_TEST_REQUIRE(rpa_plan_create(gpu.context, &layer.args, &plan) == RPA_STATUS_OK, rpa_last_error());
      rpa_attention_args run = layer.args;
      run.context_lens = moved.args.context_lens, run.block_tables = moved.args.block_tables;
      run.query_start_loc = moved.args.query_start_loc;
      BOOST_TEST_REQUIRE(rpa_plan_run(plan, &run) == RPA_STATUS_OK, rpa_last_error());
      BOOST_TEST(rpa_plan_get_error(plan) == RPA_STATUS_OK, rpa_last_error());
      expect_matches_reference(moved.c, layer.out(), "a run on other arrays");
      BOOST_TEST_REQUIRE(rpa_plan_run(plan, &layer.args) == RPA_STATUS_OK, rpa_last_error());
      expect_matches_reference(layer.c, layer.out(), "a run on the plan's arrays after it");

      run.synchronize = layer.args.synchronize = 0;
      run.stream = layer.args.stream = graph.stream();
      graph.capture([&] { return rpa_plan_run(plan, &run); });
      graph.replay();
      expect_matches_reference(moved.c, layer.out(), "a captured run on other arrays");

      Case broken = moved.c;
      broken.block_tables[3 * broken.pages_per_seq] = int32_t(broken.num_pages);
      Prepared host = prepare(broken);
      rpa_plan* host_plan = nullptr;
      BOOST_TEST_REQUIRE(rpa_plan_create(gpu.context, &host.args, &host_plan) == RPA_STATUS_INVALID_ARGUMENT);
      const std::string expected = rpa_last_error();
      moved.write_metadata(broken);
      run.synchronize = 1;
      run.stream = nullptr;
      BOOST_TEST_REQUIRE(rpa_plan_run(plan, &run) == RPA_STATUS_OK, rpa_last_error());
      BOOST_TEST(rpa_plan_get_error(plan) == RPA_STATUS_INVALID_ARGUMENT);
      BOOST_TEST(std::string(rpa_last_error()) == expected);

      rpa_attention_args partial = layer.args;
      partial.block_tables.data = nullptr;
      BOOST_TEST(rpa_plan_run(plan, &partial) == RPA_STATUS_INVALID_ARGUMENT);
      BOOST_TEST(std::string(rpa_last_error()) == "argument 'block_tables': data is NULL");
      rpa_attention_args shorter = layer.args;
      shorter.context_lens.shape[0] -= 1;
      BOOST_TEST(rpa_plan_run(plan, &shorter) == RPA_STATUS_INVALID_ARGUMENT);
      BOOST_TEST(std::string(rpa_last_error()) == "argument 'context_lens': shape[0] is 3, expected 4 (S of the plan)");
      rpa_plan_destroy(plan);
    }
  }
}

namespace {

// A run over device metadata that breaks a rule skips the broken sequence (its rows are not written, the
// others' are as before, bitwise) and rpa_plan_get_error reports it with host validation's message, once,
// on each kind of Slots. Decode and direct slots check their own sequence, listed ones read the check.
void expect_broken_rules_reported(Slots slots) {
  SlotsContext gpu(slots);
  DeviceLayer layer(gpu, 32, slots == Slots::decode);
  layer.metadata_on_device(slots);
  layer.args.max_context_len = 1800;  // the longest context of layer_case
  rpa_plan* plan = nullptr;
  BOOST_TEST_REQUIRE(rpa_plan_create(gpu.context, &layer.args, &plan) == RPA_STATUS_OK, rpa_last_error());
  BOOST_TEST_REQUIRE(rpa_plan_run(plan, &layer.args) == RPA_STATUS_OK, rpa_last_error());
  const std::vector<uint8_t> valid_out = layer.out();
  const int64_t row_bytes = layer.c.num_q_heads * layer.c.head_dim * 2;

  struct Broken {
    const char* what;
    int32_t seq;  // the sequence the kernels skip
    void (*breaks)(Case&);
    std::string message;  // "" : the message host validation gives
  };
  std::vector<Broken> rules = {
      {"negative context", 1, [](Case& m) { m.context_lens[1] = -1; }, ""},
      {"context beyond W * page_size", 3, [](Case& m) { m.context_lens[3] = int32_t(m.pages_per_seq * m.page_size) + 1; }, ""},
      {"fewer keys than queries", 2, [](Case& m) { m.context_lens[2] = m.query_start_loc[3] - m.query_start_loc[2] - 1; }, ""},
      {"page outside the pool", 3, [](Case& m) { m.block_tables[3 * m.pages_per_seq + 2] = int32_t(m.num_pages); }, ""},
      {"page outside the pool, of the prefill", 2, [](Case& m) { m.block_tables[2 * m.pages_per_seq + 1] = int32_t(m.num_pages); }, ""},
      {"negative page", 0, [](Case& m) { m.block_tables[0] = -3; }, ""},
      // The first entry every slot of the sequence reads: a kernel that copied before its check would read
      // far outside the cache (memcheck).
      {"page far outside the pool, of the prefill's first keys", 2,
       [](Case& m) { m.block_tables[2 * m.pages_per_seq] = std::numeric_limits<int32_t>::max(); }, ""},
      {"context above max_context_len", 1, [](Case& m) { m.context_lens[1] = 1801; },  // its pages cover 1808
       "argument 'context_lens': element [1] is 1801, more than max_context_len = 1800"},
  };
  for (const Broken& rule : rules) {
    BOOST_TEST_CONTEXT(rule.what) {
      Case broken = layer.c;
      rule.breaks(broken);
      std::string expected = rule.message;
      if (expected.empty()) {  // what host metadata gives
        Prepared host = prepare(broken);
        rpa_plan* host_plan = nullptr;
        BOOST_TEST_REQUIRE(rpa_plan_create(gpu.context, &host.args, &host_plan) == RPA_STATUS_INVALID_ARGUMENT);
        expected = rpa_last_error();
      }
      layer.write_metadata(broken);
      // The broken sequence's rows marked, to see that no kernel writes them.
      const auto rows_of = [&](int32_t s) {
        return std::pair{size_t(layer.c.query_start_loc[s] * row_bytes), size_t(layer.c.query_start_loc[s + 1] * row_bytes)};
      };
      std::vector<uint8_t> marked = valid_out;
      std::fill(marked.begin() + rows_of(rule.seq).first, marked.begin() + rows_of(rule.seq).second, uint8_t{0xA5});
      BOOST_TEST_REQUIRE(rpa_device_copy(gpu.context, layer.args.out.data, marked.data(), marked.size(),
                                         RPA_COPY_HOST_TO_DEVICE) == RPA_STATUS_OK);
      BOOST_TEST_REQUIRE(rpa_plan_run(plan, &layer.args) == RPA_STATUS_OK, rpa_last_error());
      BOOST_TEST(rpa_plan_get_error(plan) == RPA_STATUS_INVALID_ARGUMENT);
      BOOST_TEST(std::string(rpa_last_error()) == expected);
      BOOST_TEST(rpa_plan_get_error(plan) == RPA_STATUS_OK, "the record was not cleared");
      const std::vector<uint8_t> out = layer.out();
      for (int32_t s = 0; s < 4; ++s) {
        const auto [begin, end] = rows_of(s);
        BOOST_TEST(std::equal(out.begin() + begin, out.begin() + end, marked.begin() + begin),
                   "sequence " << s << (s == rule.seq ? " (broken) was written" : " changed"));
      }
      // One call reports it before returning.
      BOOST_TEST(rpa_attention(gpu.context, &layer.args) == RPA_STATUS_INVALID_ARGUMENT);
      BOOST_TEST(std::string(rpa_last_error()) == expected);
      layer.write_metadata(layer.c);
    }
  }
  rpa_plan_destroy(plan);
}

}  // namespace

// max_context_len defaults to W * page_size, or to 2^31 - 1 where that is more (context_lens are int32):
// a table of 2^19 pages of 4096 keys made the default wrap to a negative bound, which every sequence broke.
BOOST_AUTO_TEST_CASE(device_metadata_default_bound_of_a_table_of_two_to_the_31_keys) {
  Context gpu;
  Case c = random_case(spec_of({3, 1}, {5000, 70}, 2, 1, 64, 4096), 5);
  c.query_dtype = c.kv_dtype = c.out_dtype = RPA_DTYPE_BF16;
  c.round_to_dtypes();
  const int64_t wide = int64_t(1) << 19;  // W * page_size = 2^31
  std::vector<int32_t> tables(static_cast<size_t>(c.num_seqs * wide), 0);
  for (int32_t s = 0; s < c.num_seqs; ++s)
    std::copy_n(c.block_tables.begin() + s * c.pages_per_seq, c.pages_per_seq, tables.begin() + s * wide);
  c.block_tables = std::move(tables);
  c.pages_per_seq = wide;
  DeviceLayer layer(gpu, c);
  layer.metadata_on_device(Slots::direct);
  layer.args.max_query_len = 3;  // of T = 4
  BOOST_TEST_REQUIRE(layer.args.max_context_len == 0);
  rpa_plan* plan = nullptr;
  BOOST_TEST_REQUIRE(rpa_plan_create(gpu.context, &layer.args, &plan) == RPA_STATUS_OK, rpa_last_error());
  BOOST_TEST_REQUIRE(rpa_plan_run(plan, &layer.args) == RPA_STATUS_OK, rpa_last_error());
  BOOST_TEST(rpa_plan_get_error(plan) == RPA_STATUS_OK, rpa_last_error());
  expect_matches_reference(c, layer.out(), "a table of 2^31 keys");
  rpa_plan_destroy(plan);
}

BOOST_AUTO_TEST_CASE(device_metadata_errors_of_direct_slots) { expect_broken_rules_reported(Slots::direct); }

BOOST_AUTO_TEST_CASE(device_metadata_errors_of_listed_slots) { expect_broken_rules_reported(Slots::listed); }

BOOST_AUTO_TEST_CASE(device_metadata_errors_of_decode_slots_alone) { expect_broken_rules_reported(Slots::decode); }

// One-token bounds: decode slots alone, the metadata check beside them on the side stream; a captured graph
// follows rewritten metadata, as with other tiles.
BOOST_AUTO_TEST_CASE(device_metadata_decode_slots_alone_match_the_reference) {
  Context gpu;
  CapturedGraph graph;
  DeviceLayer layer(gpu, 33, true);
  layer.metadata_on_device(Slots::decode);
  rpa_plan* plan = nullptr;
  BOOST_TEST_REQUIRE(rpa_plan_create(gpu.context, &layer.args, &plan) == RPA_STATUS_OK, rpa_last_error());
  BOOST_TEST_REQUIRE(rpa_plan_run(plan, &layer.args) == RPA_STATUS_OK, rpa_last_error());
  BOOST_TEST(rpa_plan_get_error(plan) == RPA_STATUS_OK, rpa_last_error());
  expect_matches_reference(layer.c, layer.out(), "decode slots alone");
  layer.args.stream = graph.stream();
  layer.args.synchronize = 0;
  graph.capture([&] { return rpa_plan_run(plan, &layer.args); });
  Case updated = layer.c;  // other contexts (the longest 1800 still), the pages drawn from the whole pool
  updated.context_lens = {1800, 3, 650, 1};
  std::mt19937 rng(4);
  for (int32_t& entry : updated.block_tables) entry = static_cast<int32_t>(rng() % updated.num_pages);
  layer.write_metadata(updated);
  graph.replay();
  expect_matches_reference(updated, layer.out(), "decode slots alone, replayed after the metadata was rewritten");
  BOOST_TEST(rpa_plan_get_error(plan) == RPA_STATUS_OK, rpa_last_error());
  rpa_plan_destroy(plan);
}

// Device metadata over more sequences than a block of prepare_metadata_kernel takes at once (128): 300
// sequences of 0 to 6 query tokens, bf16. Listed slots: with block tables of 16 columns one block checks
// and lists them all, in three batches; with 32 (300 * 32 > 8192 entries) two blocks check, and the last
// to finish lists. Direct slots (a bound of 12 gives no more slots than a list) check their own. The
// run matches the reference; a broken sequence of the third batch is skipped (its rows are not written,
// the others' are as before, bitwise) and reported with host validation's message, and so is a broken
// sequence without query rows, which no tile reads.
BOOST_AUTO_TEST_CASE(device_metadata_of_many_sequences) {
  constexpr int32_t kPage = 8;
  for (const int32_t table_width : {16, 32})
    for (const Slots slots : {Slots::direct, Slots::listed}) {
      BOOST_TEST_CONTEXT("W = " << table_width << ", " << slots_name(slots)) {
        std::mt19937 rng(static_cast<uint32_t>(table_width));
        RandomSpec spec;
        spec.num_q_heads = 4, spec.num_kv_heads = 2, spec.head_dim = 64, spec.page_size = kPage, spec.padding_tokens = 3;
        for (int s = 0; s < 300; ++s) {
          const int32_t q_len = static_cast<int32_t>(rng() % 7);
          spec.q_lens.push_back(q_len);
          spec.context_lens.push_back(q_len + static_cast<int32_t>(rng() % ((table_width - 1) * kPage - q_len + 1)));
        }
        spec.q_lens[260] = 5, spec.context_lens[260] = 40;  // broken below
        spec.q_lens[270] = 0, spec.context_lens[270] = 9;   // so is this one
        spec.context_lens[7] = (table_width - 1) * kPage;  // W - 1 columns of pages and random_case's spare one
        Case c = random_case(spec, 11);
        BOOST_TEST_REQUIRE(c.pages_per_seq == table_width);
        c.query_dtype = c.kv_dtype = c.out_dtype = RPA_DTYPE_BF16;
        c.round_to_dtypes();
        SlotsContext gpu(slots);
        DeviceLayer layer(gpu, c);
        layer.metadata_on_device(slots);
        rpa_plan* plan = nullptr;
        BOOST_TEST_REQUIRE(rpa_plan_create(gpu.context, &layer.args, &plan) == RPA_STATUS_OK, rpa_last_error());
        BOOST_TEST_REQUIRE(rpa_plan_run(plan, &layer.args) == RPA_STATUS_OK, rpa_last_error());
        BOOST_TEST(rpa_plan_get_error(plan) == RPA_STATUS_OK, rpa_last_error());
        const std::vector<uint8_t> valid_out = layer.out();
        expect_matches_reference(c, valid_out, "300 sequences");

        const int64_t row_bytes = c.num_q_heads * c.head_dim * 2;
        struct Broken {
          int32_t seq;
          void (*breaks)(Case&);
        };
        for (const Broken& rule : {Broken{260, [](Case& m) { m.block_tables[260 * m.pages_per_seq + 2] = -1; }},  // keys 16..23 of 40
                                   Broken{270, [](Case& m) { m.context_lens[270] = -1; }}}) {
          BOOST_TEST_CONTEXT("sequence " << rule.seq) {
            Case broken = c;
            rule.breaks(broken);
            Prepared host = prepare(broken);
            rpa_plan* host_plan = nullptr;
            BOOST_TEST_REQUIRE(rpa_plan_create(gpu.context, &host.args, &host_plan) == RPA_STATUS_INVALID_ARGUMENT);
            const std::string expected = rpa_last_error();
            layer.write_metadata(broken);
            const size_t begin = size_t(c.query_start_loc[rule.seq] * row_bytes);
            const size_t end = size_t(c.query_start_loc[rule.seq + 1] * row_bytes);
            std::vector<uint8_t> marked = valid_out;
            std::fill(marked.begin() + begin, marked.begin() + end, uint8_t{0xA5});
            BOOST_TEST_REQUIRE(rpa_device_copy(gpu.context, layer.args.out.data, marked.data(), marked.size(),
                                               RPA_COPY_HOST_TO_DEVICE) == RPA_STATUS_OK);
            BOOST_TEST_REQUIRE(rpa_plan_run(plan, &layer.args) == RPA_STATUS_OK, rpa_last_error());
            BOOST_TEST(rpa_plan_get_error(plan) == RPA_STATUS_INVALID_ARGUMENT);
            BOOST_TEST(std::string(rpa_last_error()) == expected);
            BOOST_TEST((layer.out() == marked), "rows other than the broken sequence's changed, or its rows were written");
            layer.write_metadata(c);
          }
        }
        rpa_plan_destroy(plan);
      }
    }
}

// Meson counts exit status 77 as a skipped test.
int main(int argc, char** argv) {
  if (!rpa_backend_available(RPA_BACKEND_GPU) || !driver.load()) {
    std::puts("skipped: no usable NVIDIA GPU (plugin and libcuda.so.1)");
    return 77;
  }
  return boost::unit_test::unit_test_main(init_unit_test, argc, argv);
}
