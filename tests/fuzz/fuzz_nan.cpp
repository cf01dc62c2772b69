// libFuzzer harness over valid calls whose every invisible slot holds NaN or an infinity: KV slots no
// query can see (unused pages, slots past context_len, keys outside the window, the gaps of strided
// layouts), the queries of rows no sequence covers, and stale block-table entries pointing anywhere.
// Quantised caches (fp8 e4m3/e5m2, int8, with per-tensor or per-head scales) hold the codes of NaN and
// infinities there (int8 has none: its largest codes).
// It requires
//   - the reference: no NaN in out or lse (invisible values never matter), padding rows 0 and -inf;
//   - simd at 1 thread: out within a tolerance of the reference (one rounding of the output dtype plus
//     f32 arithmetic), lse within 1e-4 relative;
//   - simd at 2 threads: bitwise equal to simd at 1 thread.
// Build: tools/sanitize.sh (Meson option fuzz).
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "rpa/rpa.h"

namespace {

[[noreturn]] void fail(const std::string& why) {
  std::fprintf(stderr, "fuzz_nan: %s\n", why.c_str());
  std::abort();
}

rpa_context* context_of(rpa_backend backend, int threads) {
  rpa_context_options options;
  rpa_context_options_init(&options);
  options.backend = backend;
  options.num_threads = threads;
  rpa_context* context = nullptr;
  if (rpa_context_create(&options, &context) != RPA_STATUS_OK) fail(std::string("context: ") + rpa_last_error());
  return context;
}

constexpr float kPoison[] = {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                             -std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::quiet_NaN()};

// One float tensor as bytes of its dtype, every element initialised to a poison value.
struct Store {
  rpa_dtype dtype = RPA_DTYPE_F32;
  std::vector<uint8_t> bytes;
  void init(rpa_dtype type, int64_t elements, float poison) {
    dtype = type;
    bytes.resize(static_cast<size_t>(elements) * rpa::dtype_size(type));
    for (int64_t i = 0; i < elements; ++i) set(i, poison);
  }
  void set(int64_t i, float x) { rpa::store_float(bytes.data(), dtype, i, x); }
  void set_kv(int64_t i, float x, float scale) { rpa::store_kv(bytes.data(), dtype, i, x, scale); }
  void init_kv(rpa_dtype type, int64_t elements, float poison) {
    dtype = type;
    bytes.resize(static_cast<size_t>(elements) * rpa::dtype_size(type));
    for (int64_t i = 0; i < elements; ++i) set_kv(i, poison, 1.0f / 1024);
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static rpa_context* const reference = context_of(RPA_BACKEND_REFERENCE, 1);
  static rpa_context* const simd1 = context_of(RPA_BACKEND_SIMD, 1);
  static rpa_context* const simd2 = context_of(RPA_BACKEND_SIMD, 2);
  FuzzedDataProvider in(data, size);
  auto byte = [&] { return in.ConsumeIntegral<uint8_t>(); };
  auto poison = [&] { return kPoison[byte() % 4]; };
  const rpa_dtype types[] = {RPA_DTYPE_F32, RPA_DTYPE_F16, RPA_DTYPE_BF16};

  // Shapes.
  const int64_t KVH = 1 + byte() % 3, group = 1 + byte() % 4, QH = KVH * group;
  static const int64_t dims[] = {1, 2, 3, 8, 16, 17, 32, 33, 64, 72, 128, 5};
  const int64_t D = dims[byte() % 12];
  const int64_t page_size = 1 + byte() % 8;
  const int32_t S = 1 + byte() % 4;
  std::vector<int32_t> q_lens(S), lens(S);
  for (int32_t s = 0; s < S; ++s) {
    q_lens[s] = byte() % 6;
    if (byte() < 32) q_lens[s] = 16 + byte() % 64;  // prefill chunks now and then
    lens[s] = q_lens[s] + (byte() < 40 ? 0 : byte() % 48 + (byte() < 16 ? 600 : 0));  // long ones split
  }
  const int32_t num_seqs = byte() < 200 ? S : byte() % (S + 1);
  const int64_t padding_tokens = byte() % 3;
  int64_t W = 1;
  for (int32_t s = 0; s < S; ++s) W = std::max<int64_t>(W, (lens[s] + page_size - 1) / page_size);
  W += byte() % 2;
  const int64_t used_pages = S * W, P = used_pages + byte() % 3;
  const int32_t window = byte() < 160 ? 0 : 1 + byte() % 40;
  const double scale = byte() < 128 ? 0 : 0.05 + byte() / 256.0;  // scores stay below ~130
  const double cap = byte() < 192 ? 0 : 1 + byte() % 50;
  const rpa_dtype kv_types[] = {RPA_DTYPE_F32, RPA_DTYPE_F16, RPA_DTYPE_BF16, RPA_DTYPE_FP8_E4M3,
                                RPA_DTYPE_FP8_E5M2, RPA_DTYPE_INT8};
  const rpa_dtype q_dtype = types[byte() % 3], kv_dtype = kv_types[byte() % 6], out_dtype = types[byte() % 3];
  const bool quantised = rpa::is_quantised_dtype(kv_dtype);
  const bool separate = byte() & 1;
  const int64_t gap = byte() % 3;  // padding elements between rows, poisoned
  const uint64_t seed = in.ConsumeIntegral<uint64_t>();
  uint64_t state = seed;
  auto value = [&](rpa_dtype dtype) {  // a random value in [-1, 1] exact in dtype
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    const float x = static_cast<float>(static_cast<int32_t>(state >> 40) - (1 << 23)) / static_cast<float>(1 << 23);
    if (dtype == RPA_DTYPE_F16) return rpa::f16_to_float(rpa::float_to_f16(x));
    if (dtype == RPA_DTYPE_BF16) return rpa::bf16_to_float(rpa::float_to_bf16(x));
    return x;
  };

  // Metadata: each sequence's pages distinct and shuffled through the pool; unneeded entries garbage.
  std::vector<int32_t> pages(static_cast<size_t>(P));
  std::iota(pages.begin(), pages.end(), 0);
  for (size_t i = pages.size(); i > 1; --i) std::swap(pages[i - 1], pages[(seed >> (i % 50)) % i]);
  std::vector<int32_t> tables(static_cast<size_t>(S * W)), starts(S + 1, 0);
  for (int32_t s = 0; s < S; ++s) {
    starts[s + 1] = starts[s] + q_lens[s];
    for (int64_t c = 0; c < W; ++c) tables[s * W + c] = pages[s * W + c];
  }
  const int64_t T = starts[S] + padding_tokens;
  // Small enough for many runs a second: the reference's work (rows times keys times D) and the cache.
  int64_t work = 0;
  for (int32_t s = 0; s < S; ++s) work += int64_t{q_lens[s]} * lens[s] * QH * D;
  if (T == 0 || work > (1 << 17) || P * page_size * 2 * KVH * D > (1 << 16)) return 0;
  std::vector<bool> visible(static_cast<size_t>(P * page_size), false);  // (page, slot)
  for (int32_t s = 0; s < num_seqs; ++s) {
    if (q_lens[s] == 0) continue;
    const int64_t first = window > 0 ? std::max<int64_t>(0, lens[s] - q_lens[s] - window + 1) : 0;
    for (int64_t j = first; j < lens[s]; ++j) visible[tables[s * W + j / page_size] * page_size + j % page_size] = true;
    for (int64_t c = 0; c < W; ++c)  // entries the sequence does not need may hold anything
      if (c < first / page_size || c > (lens[s] - 1) / page_size) tables[s * W + c] = static_cast<int32_t>(state >> (c % 32));
  }
  for (int32_t s = num_seqs; s < S; ++s)
    for (int64_t c = 0; c < W; ++c) tables[s * W + c] = -1 - c;

  // A quantised cache's scales, [1] or [KVH] for K and for V: values in [-1, 1] are stored as codes of
  // x / scale (int8: up to 100; fp8: their own grid), and read back as code * scale.
  std::vector<float> k_scales, v_scales;
  if (quantised) {
    const float unit = kv_dtype == RPA_DTYPE_INT8 ? 0.01f : 1.0f;
    for (std::vector<float>* scales : {&k_scales, &v_scales}) {
      scales->resize(byte() % 2 ? static_cast<size_t>(KVH) : 1);
      for (float& scale : *scales) scale = unit * (0.25f + static_cast<float>(byte() % 4) / 4);
    }
  }
  // KV: combined [P, page, 2 KVH, D] or separate [P, page, KVH, D] caches, rows padded by `gap`.
  const int64_t row = D + gap, heads = separate ? KVH : 2 * KVH, slot_stride = heads * row + gap;
  const int64_t page_stride = page_size * slot_stride + gap;
  Store kv, k, v;
  for (Store* store : separate ? std::vector<Store*>{&k, &v} : std::vector<Store*>{&kv})
    store->init_kv(kv_dtype, P * page_stride, poison());
  auto scale_of = [&](const std::vector<float>& scales, int64_t kv_head) {
    return scales.empty() ? 1.0f : scales[scales.size() == 1 ? 0 : static_cast<size_t>(kv_head)];
  };
  for (int64_t page = 0; page < P; ++page)
    for (int64_t slot = 0; slot < page_size; ++slot) {
      const bool seen = visible[page * page_size + slot];
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t d = 0; d < D; ++d) {
          const int64_t at = page * page_stride + slot * slot_stride + h * row + d;
          if (separate) {
            k.set_kv(at, seen ? value(kv_dtype) : poison(), scale_of(k_scales, h));
            v.set_kv(at, seen ? value(kv_dtype) : poison(), scale_of(v_scales, h));
          } else {
            kv.set_kv(at, seen ? value(kv_dtype) : poison(), scale_of(h % 2 ? v_scales : k_scales, h / 2));
          }
        }
    }

  // Queries: rows of processed sequences finite, the others poisoned.
  const int64_t q_head_stride = D + gap, q_token_stride = QH * q_head_stride + gap;
  Store queries;
  queries.init(q_dtype, T * q_token_stride, poison());
  const int64_t covered_end = starts[num_seqs];
  for (int64_t t = 0; t < covered_end; ++t)
    for (int64_t h = 0; h < QH; ++h)
      for (int64_t d = 0; d < D; ++d) queries.set(t * q_token_stride + h * q_head_stride + d, value(q_dtype));

  // Sinks: finite or -inf.
  Store sinks;
  int64_t sink_heads = 0, sinks_per_head = 0;
  if (byte() >= 170) {
    const int64_t options[] = {1, KVH, QH};
    sink_heads = options[byte() % 3], sinks_per_head = 1 + byte() % 2;
    sinks.init(types[byte() % 3], sink_heads * sinks_per_head, 0);
    for (int64_t i = 0; i < sink_heads * sinks_per_head; ++i)
      sinks.set(i, byte() < 32 ? -std::numeric_limits<float>::infinity() : 2 * value(sinks.dtype));
  }

  auto tensor = [](void* data, rpa_dtype dtype, std::initializer_list<int64_t> shape,
                   std::initializer_list<int64_t> strides) {
    rpa_tensor t{};
    t.data = data, t.dtype = dtype, t.ndim = static_cast<int32_t>(shape.size());
    std::copy(shape.begin(), shape.end(), t.shape);
    std::copy(strides.begin(), strides.end(), t.strides);
    return t;
  };
  rpa_attention_args args;
  rpa_attention_args_init(&args);
  args.queries = tensor(queries.bytes.data(), q_dtype, {T, QH, D}, {q_token_stride, q_head_stride, 1});
  if (separate) {
    args.k_cache = tensor(k.bytes.data(), kv_dtype, {P, page_size, KVH, D}, {page_stride, slot_stride, row, 1});
    args.v_cache = tensor(v.bytes.data(), kv_dtype, {P, page_size, KVH, D}, {page_stride, slot_stride, row, 1});
  } else {
    args.kv_pages = tensor(kv.bytes.data(), kv_dtype, {P, page_size, 2 * KVH, D}, {page_stride, slot_stride, row, 1});
  }
  args.context_lens = tensor(lens.data(), RPA_DTYPE_I32, {S}, {1});
  args.block_tables = tensor(tables.data(), RPA_DTYPE_I32, {S, W}, {W, 1});
  args.query_start_loc = tensor(starts.data(), RPA_DTYPE_I32, {S + 1}, {1});
  args.num_seqs = num_seqs;
  args.softmax_scale = scale;
  args.logits_soft_cap = cap;
  args.sliding_window = window;
  if (sink_heads)
    args.softmax_aux = tensor(sinks.bytes.data(), sinks.dtype, {sink_heads, sinks_per_head}, {sinks_per_head, 1});
  if (quantised) {
    args.k_scale = tensor(k_scales.data(), RPA_DTYPE_F32, {static_cast<int64_t>(k_scales.size())}, {1});
    args.v_scale = tensor(v_scales.data(), RPA_DTYPE_F32, {static_cast<int64_t>(v_scales.size())}, {1});
  }

  struct Output {
    std::vector<uint8_t> out;
    std::vector<float> lse;
  };
  auto run = [&](rpa_context* context) {
    Output o;
    o.out.assign(static_cast<size_t>(T * QH * D * rpa::dtype_size(out_dtype)), 0xff);
    o.lse.assign(static_cast<size_t>(T * QH), std::nanf(""));
    args.out = tensor(o.out.data(), out_dtype, {T, QH, D}, {QH * D, D, 1});
    args.lse = tensor(o.lse.data(), RPA_DTYPE_F32, {T, QH}, {QH, 1});
    if (rpa_attention(context, &args) != RPA_STATUS_OK) fail(std::string("a valid call failed: ") + rpa_last_error());
    return o;
  };
  const Output ref = run(reference), one = run(simd1), two = run(simd2);

  if (one.out != two.out || std::memcmp(one.lse.data(), two.lse.data(), one.lse.size() * sizeof(float)) != 0)
    fail("simd at 1 and 2 threads differ");
  // One rounding of the output dtype (relative to |out| <= 1) plus f32 arithmetic.
  const double tolerance = out_dtype == RPA_DTYPE_F32 ? 3e-5 : out_dtype == RPA_DTYPE_F16 ? 1.0 / 1024 : 1.0 / 128;
  for (int64_t i = 0; i < T * QH * D; ++i) {
    const float r = rpa::load_float(ref.out.data(), out_dtype, i), s = rpa::load_float(one.out.data(), out_dtype, i);
    const int64_t t = i / (QH * D);
    if (!std::isfinite(r)) fail("reference out[" + std::to_string(i) + "] = " + std::to_string(r));
    if ((t < starts[0] || t >= covered_end) && r != 0) fail("padding row " + std::to_string(t) + " is not 0");
    if (!(std::fabs(r - s) <= tolerance))
      fail("out[" + std::to_string(i) + "]: reference " + std::to_string(r) + ", simd " + std::to_string(s));
  }
  for (int64_t i = 0; i < T * QH; ++i) {
    const float r = ref.lse[i], s = one.lse[i];
    if (std::isnan(r) || r == std::numeric_limits<float>::infinity()) fail("reference lse " + std::to_string(r));
    if (r == -std::numeric_limits<float>::infinity() ? s != r : !(std::fabs(r - s) <= 1e-4 * std::max(1.0f, std::fabs(r))))
      fail("lse[" + std::to_string(i) + "]: reference " + std::to_string(r) + ", simd " + std::to_string(s));
  }
  return 0;
}
