// GPU benchmark of the workloads through the public C ABI (device memory, device-event timing):
// W1 decode, W2 prefill, W3 mixed, Llama-3-8B attention shape (QH 32, KVH 8, D 128, page 16, bf16).
// Prints each workload's median time, KV bytes/s and its share of the device-to-device copy bandwidth
// measured in the same run over a buffer of the same size, and attention FLOP/s.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "rpa/rpa.h"

namespace {

constexpr int64_t kQHeads = 32, kKvHeads = 8, kHeadDim = 128, kPageSize = 16;

struct Sequence {
  int32_t q_len, context_len;
};

void check(rpa_status status, const char* what) {
  if (status == RPA_STATUS_OK) return;
  std::fprintf(stderr, "%s: %s: %s\n", what, rpa_status_string(status), rpa_last_error());
  std::exit(1);
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

rpa_tensor tensor(void* data, rpa_dtype dtype, std::initializer_list<int64_t> shape) {
  rpa_tensor t{};
  t.data = data, t.dtype = dtype, t.ndim = static_cast<int32_t>(shape.size());
  std::copy(shape.begin(), shape.end(), t.shape);
  return t;
}

// Random bf16 bits of moderate magnitude (|x| < 2).
void fill_bf16(std::vector<uint16_t>& data, uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (uint16_t& x : data) x = static_cast<uint16_t>(0x3c00u + (rng() % 0x0380u)) | (rng() & 1 ? 0x8000u : 0u);
}

// Device-to-device copy of `bytes`, timed on the host around synchronous copies: bytes read plus written per second.
double copy_bandwidth(rpa_context* context, size_t bytes) {
  void *a = nullptr, *b = nullptr;
  check(rpa_device_alloc(context, bytes, &a), "alloc");
  check(rpa_device_alloc(context, bytes, &b), "alloc");
  std::vector<double> seconds;
  for (int i = 0; i < 12; ++i) {
    const auto start = std::chrono::steady_clock::now();
    check(rpa_device_copy(context, b, a, bytes, RPA_COPY_DEVICE_TO_DEVICE), "copy");
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  check(rpa_device_free(context, a), "free");
  check(rpa_device_free(context, b), "free");
  return 2.0 * bytes / median(seconds);
}

void run_workload(rpa_context* context, const char* name, const std::vector<Sequence>& seqs, const char* target) {
  int64_t tokens = 0, pages_per_seq = 1, pages = 0;
  for (const Sequence& s : seqs) {
    tokens += s.q_len;
    const int64_t n = (s.context_len + kPageSize - 1) / kPageSize;
    pages_per_seq = std::max(pages_per_seq, n);
    pages += n;
  }
  const int32_t num_seqs = static_cast<int32_t>(seqs.size());
  std::vector<int32_t> context_lens, query_start_loc{0}, block_tables(num_seqs * pages_per_seq, 0);
  std::vector<int32_t> pool(pages);
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), std::mt19937_64(1));
  int64_t next = 0, kv_bytes = 0;
  double flops = 0;
  for (int32_t s = 0; s < num_seqs; ++s) {
    context_lens.push_back(seqs[s].context_len);
    query_start_loc.push_back(query_start_loc.back() + seqs[s].q_len);
    for (int64_t p = 0; p * kPageSize < seqs[s].context_len; ++p) block_tables[s * pages_per_seq + p] = pool[next++];
    kv_bytes += int64_t(seqs[s].context_len) * 2 * kKvHeads * kHeadDim * 2;
    for (int32_t i = 0; i < seqs[s].q_len; ++i)  // q.k and p.v: 2 FLOPs each per visible key and dim
      flops += 4.0 * kQHeads * kHeadDim * (seqs[s].context_len - seqs[s].q_len + i + 1);
  }

  const size_t q_elements = tokens * kQHeads * kHeadDim, kv_elements = pages * kPageSize * 2 * kKvHeads * kHeadDim;
  std::vector<uint16_t> host_q(q_elements), host_kv(kv_elements);
  fill_bf16(host_q, 2), fill_bf16(host_kv, 3);
  void *q = nullptr, *kv = nullptr, *out = nullptr;
  check(rpa_device_alloc(context, q_elements * 2, &q), "alloc q");
  check(rpa_device_alloc(context, kv_elements * 2, &kv), "alloc kv");
  check(rpa_device_alloc(context, q_elements * 2, &out), "alloc out");
  check(rpa_device_copy(context, q, host_q.data(), q_elements * 2, RPA_COPY_HOST_TO_DEVICE), "copy q");
  check(rpa_device_copy(context, kv, host_kv.data(), kv_elements * 2, RPA_COPY_HOST_TO_DEVICE), "copy kv");

  rpa_attention_args args;
  rpa_attention_args_init(&args);
  args.queries = tensor(q, RPA_DTYPE_BF16, {tokens, kQHeads, kHeadDim});
  args.kv_pages = tensor(kv, RPA_DTYPE_BF16, {pages, kPageSize, 2 * kKvHeads, kHeadDim});
  args.context_lens = tensor(context_lens.data(), RPA_DTYPE_I32, {num_seqs});
  args.block_tables = tensor(block_tables.data(), RPA_DTYPE_I32, {num_seqs, pages_per_seq});
  args.query_start_loc = tensor(query_start_loc.data(), RPA_DTYPE_I32, {num_seqs + 1});
  args.num_seqs = num_seqs;
  args.out = tensor(out, RPA_DTYPE_BF16, {tokens, kQHeads, kHeadDim});
  args.memory = RPA_MEMORY_DEVICE;

  std::vector<double> ms(50);
  check(rpa_time_attention(context, &args, 5, ms.data()), "warm-up");
  check(rpa_time_attention(context, &args, static_cast<int32_t>(ms.size()), ms.data()), "timed runs");
  const double time_ms = median(ms);
  const double copy = copy_bandwidth(context, kv_bytes);
  const double kv_rate = kv_bytes / (time_ms * 1e-3);
  std::printf("%-8s %9.4f ms  (target %s)  KV %7.1f MB  %7.1f GB/s = %5.1f%% of D2D copy %7.1f GB/s  %7.2f TFLOP/s\n",
              name, time_ms, target, kv_bytes / 1e6, kv_rate / 1e9, 100.0 * kv_rate / copy, copy / 1e9,
              flops / (time_ms * 1e-3) / 1e12);
  check(rpa_device_free(context, q), "free"), check(rpa_device_free(context, kv), "free");
  check(rpa_device_free(context, out), "free");
}

}  // namespace

int main() {
  rpa_context_options options;
  rpa_context_options_init(&options);
  options.backend = RPA_BACKEND_GPU;
  rpa_context* context = nullptr;
  check(rpa_context_create(&options, &context), "gpu context");
  std::printf("QH %lld KVH %lld D %lld page %lld, bf16 queries/KV/out, device memory, median of 50 runs\n",
              (long long)kQHeads, (long long)kKvHeads, (long long)kHeadDim, (long long)kPageSize);
  run_workload(context, "W1", std::vector<Sequence>(64, Sequence{1, 2048}), "<= 0.21 ms");
  run_workload(context, "W2", std::vector<Sequence>(4, Sequence{1024, 1024}), "<= 0.25 ms");
  std::vector<Sequence> mixed(32, Sequence{1, 2048});
  mixed.push_back({512, 1024}), mixed.push_back({512, 1024});
  run_workload(context, "W3", mixed, "<= 0.30 ms");
  rpa_context_destroy(context);
  return 0;
}
