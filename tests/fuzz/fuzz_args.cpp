// libFuzzer harness over the whole rpa_attention_args. Every tensor gets a buffer of exactly the bytes
// its view claims (ASan sees any access outside), shapes, strides, dtypes, enums, scalars, metadata
// and pointers are drawn from the input, and an independent model of the README's validation rules
// predicts the answer:
//   - a call the model accepts must succeed, change no input, and write no out/lse byte outside the
//     views' elements;
//   - a call the model rejects must fail with one of the statuses of the rules it breaks, name an
//     argument, and write nothing.
// Each input runs on the reference and the simd backend. Build: tools/sanitize.sh (Meson option fuzz).
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "rpa/rpa.h"

namespace {

constexpr int64_t kMaxBufferBytes = int64_t{1} << 22;  // views claiming more get a token buffer

[[noreturn]] void fail(const std::string& why) {
  std::fprintf(stderr, "fuzz_args: %s\n", why.c_str());
  std::abort();
}

// ---------------------------------------------------------------------------------------------------
// The model of the README's Validation section. It reads the args as a C caller wrote them.

int32_t int_of(const void* field) {
  int32_t value;
  std::memcpy(&value, field, sizeof value);
  return value;
}

int64_t size_of(int32_t dtype) {
  switch (dtype) {
    case 0: case 6: return 4;
    case 1: case 2: return 2;
    case 3: case 4: case 5: return 1;
    default: return 0;
  }
}

// What the model knows of one tensor after its own rules: broken, or its strides and byte span.
struct View {
  bool ok = false;
  int64_t strides[RPA_MAX_DIMS] = {};
  uintptr_t begin = 0, end = 0;
};

struct Model {
  std::set<rpa_status> broken;  // the statuses of the rules the call breaks
  void breaks(rpa_status status = RPA_STATUS_INVALID_ARGUMENT) { broken.insert(status); }
};

enum class Role { floating, kv, metadata };

// Element-level rules of one present tensor: ndim, dtype, sizes, strides, alignment, overflows.
View check_view(Model& m, const rpa_tensor& t, int ndim, Role role) {
  View v;
  if (!t.data) return m.breaks(), v;
  if (t.ndim != ndim) return m.breaks(), v;
  const int32_t dtype = int_of(&t.dtype);
  if (role == Role::metadata && dtype != 6) return m.breaks(), v;
  if (role != Role::metadata && !(dtype == 0 || dtype == 1 || dtype == 2)) {
    m.breaks(role == Role::kv && dtype >= 3 && dtype <= 5 ? RPA_STATUS_UNSUPPORTED : RPA_STATUS_INVALID_ARGUMENT);
    return v;
  }
  const int64_t size = size_of(dtype);
  if (reinterpret_cast<uintptr_t>(t.data) % size) return m.breaks(), v;
  bool all_zero = true;
  for (int i = 0; i < ndim; ++i) {
    if (t.shape[i] <= 0 || t.shape[i] > INT32_MAX) return m.breaks(), v;
    all_zero = all_zero && t.strides[i] == 0;
  }
  __int128 count = 1;
  for (int i = ndim - 1; i >= 0; --i) {
    v.strides[i] = all_zero ? static_cast<int64_t>(count) : t.strides[i];
    count *= t.shape[i];
    if (count > INT64_MAX) return m.breaks(), v;
    if (v.strides[i] < 0) return m.breaks(), v;
  }
  if (count * size > INT64_MAX) return m.breaks(), v;
  if (v.strides[ndim - 1] != 1) return m.breaks(), v;
  __int128 last = 0;
  for (int i = 0; i < ndim; ++i) last += static_cast<__int128>(t.shape[i] - 1) * v.strides[i];
  const __int128 bytes = (last + 1) * size;
  if (bytes > INT64_MAX) return m.breaks(), v;
  v.begin = reinterpret_cast<uintptr_t>(t.data);
  if (static_cast<__int128>(v.begin) + bytes > static_cast<__int128>(UINTPTR_MAX)) return m.breaks(), v;
  v.end = v.begin + static_cast<uintptr_t>(bytes);
  v.ok = true;
  return v;
}

// An output reaches no element twice: ordered by stride, each stride covers the faster dimensions.
bool distinct_elements(const rpa_tensor& t, const View& v, int ndim) {
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, extent)
  for (int i = 0; i < ndim; ++i)
    if (t.shape[i] > 1) dims.push_back({v.strides[i], t.shape[i]});
  std::stable_sort(dims.begin(), dims.end(), [](auto a, auto b) { return a.first < b.first; });
  __int128 reach = 1;
  for (auto [stride, extent] : dims) {
    if (stride < reach) return false;
    reach += static_cast<__int128>(stride) * (extent - 1);
  }
  return true;
}

bool overlap(const View& a, const View& b) { return a.ok && b.ok && a.begin < b.end && b.begin < a.end; }

bool normal_f32(double x) { return std::fabs(x) >= FLT_MIN && std::fabs(x) <= FLT_MAX; }

float load(const void* data, int32_t dtype, int64_t index) {
  if (dtype == 0) {
    float f;
    std::memcpy(&f, static_cast<const char*>(data) + 4 * index, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, static_cast<const char*>(data) + 2 * index, 2);
  if (dtype == 2) {
    const uint32_t u = uint32_t{h} << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  // f16: only NaN and +inf matter to the rules (exponent all ones).
  if ((h & 0x7c00) != 0x7c00) return 0;
  if (h & 0x3ff) return NAN;
  return (h & 0x8000) ? -INFINITY : INFINITY;
}

struct Prediction {
  std::set<rpa_status> broken;  // the statuses the call may answer; empty: it must succeed
  bool unknown = false;         // the contents would be read from a buffer that does not back its view
  bool sinks_read = false;      // the library reads the sinks' values (their view is valid)
};

// What the README's rules say of this call on a CPU backend. `readable`: every present buffer backs its
// view, so the metadata and sink values may be read.
Prediction predict(const rpa_attention_args* given, bool readable) {
  Model m;
  Prediction result;
  if (given->struct_size < sizeof(size_t) || given->struct_size > (1u << 20)) {
    m.breaks();
    result.broken = m.broken;
    return result;
  }
  rpa_attention_args a;
  rpa_attention_args_init(&a);
  std::memcpy(&a, given, std::min(given->struct_size, sizeof a));

  const View q = check_view(m, a.queries, 3, Role::floating);
  const int64_t T = a.queries.shape[0], QH = a.queries.shape[1], D = a.queries.shape[2];
  if (q.ok && static_cast<__int128>(T) * QH > INT32_MAX) m.breaks();
  View kv, k, v;
  int64_t KVH = 0, P = 0, page_size = 0;
  bool kv_ok = false;
  if (a.kv_pages.data) {
    if (a.k_cache.data || a.v_cache.data) m.breaks();
    kv = check_view(m, a.kv_pages, 4, Role::kv);
    if (kv.ok && a.kv_pages.shape[2] % 2) m.breaks();
    if (kv.ok && q.ok && a.kv_pages.shape[3] != D) m.breaks();
    kv_ok = kv.ok && a.kv_pages.shape[2] % 2 == 0;
    KVH = a.kv_pages.shape[2] / 2, P = a.kv_pages.shape[0], page_size = a.kv_pages.shape[1];
  } else {
    if (!a.k_cache.data && !a.v_cache.data) m.breaks();
    k = check_view(m, a.k_cache, 4, Role::kv);
    v = check_view(m, a.v_cache, 4, Role::kv);
    if (k.ok && v.ok) {
      for (int i = 0; i < 4; ++i)
        if (a.k_cache.shape[i] != a.v_cache.shape[i]) m.breaks();
      if (int_of(&a.k_cache.dtype) != int_of(&a.v_cache.dtype)) m.breaks();
      if (q.ok && a.k_cache.shape[3] != D) m.breaks();
    }
    kv_ok = k.ok && v.ok;
    KVH = a.k_cache.shape[2], P = a.k_cache.shape[0], page_size = a.k_cache.shape[1];
  }
  if (q.ok && kv_ok && KVH > 0 && QH % KVH) m.breaks();

  const View out = check_view(m, a.out, 3, Role::floating);
  if (out.ok && q.ok && (a.out.shape[0] != T || a.out.shape[1] != QH || a.out.shape[2] != D)) m.breaks();
  if (out.ok && !distinct_elements(a.out, out, 3)) m.breaks();
  View lse;
  if (a.lse.data) {
    lse = check_view(m, a.lse, 2, Role::floating);
    if (lse.ok && int_of(&a.lse.dtype) != 0) m.breaks();
    if (lse.ok && q.ok && (a.lse.shape[0] != T || a.lse.shape[1] != QH)) m.breaks();
    if (lse.ok && !distinct_elements(a.lse, lse, 2)) m.breaks();
  }
  const int32_t memory = int_of(&a.memory);
  if (memory != 0) m.breaks();  // not host: invalid, or device memory on a CPU backend

  if (a.softmax_scale != 0 && !normal_f32(a.softmax_scale)) m.breaks();
  if (a.logits_soft_cap != 0 && !(a.logits_soft_cap > 0 && normal_f32(a.logits_soft_cap))) m.breaks();
  if (a.sliding_window < 0) m.breaks();

  View sinks;
  if (a.softmax_aux.data) {
    sinks = check_view(m, a.softmax_aux, 2, Role::floating);
    if (sinks.ok && kv_ok) {
      const int64_t heads = a.softmax_aux.shape[0];
      if (heads != 1 && heads != KVH && heads != QH) m.breaks();
    }
    result.sinks_read = sinks.ok && memory == 0;
  }

  const View lens = check_view(m, a.context_lens, 1, Role::metadata);
  const View tables = check_view(m, a.block_tables, 2, Role::metadata);
  const View starts = check_view(m, a.query_start_loc, 1, Role::metadata);
  const int64_t S = a.context_lens.shape[0];
  if (lens.ok && tables.ok && a.block_tables.shape[0] != S) m.breaks();
  if (lens.ok && starts.ok && a.query_start_loc.shape[0] != S + 1) m.breaks();

  // Overlaps (host memory).
  const View* const outputs[] = {&out, &lse};
  const View* const inputs[] = {&q, &kv, &k, &v, &sinks, &lens, &tables, &starts};
  for (const View* output : outputs)
    for (const View* input : inputs)
      if (overlap(*output, *input)) m.breaks();
  if (overlap(out, lse)) m.breaks();

  // The contents of the sinks and the metadata, only once every tensor rule holds (the library stops
  // at the first broken rule, and these rules read through views that must be valid).
  result.broken = m.broken;
  if (!m.broken.empty()) return result;
  if (!readable) {
    result.unknown = true;
    return result;
  }
  if (a.softmax_aux.data && memory == 0)
    for (int64_t h = 0; h < a.softmax_aux.shape[0]; ++h)
      for (int64_t n = 0; n < a.softmax_aux.shape[1]; ++n) {
        const float x = load(a.softmax_aux.data, int_of(&a.softmax_aux.dtype), h * sinks.strides[0] + n);
        if (std::isnan(x) || x == INFINITY) m.breaks();
      }
  if (a.num_seqs < 0 || a.num_seqs > S) m.breaks();
  result.broken = m.broken;
  if (!m.broken.empty()) return result;
  const auto* cl = static_cast<const int32_t*>(a.context_lens.data);
  const auto* bt = static_cast<const int32_t*>(a.block_tables.data);
  const auto* qsl = static_cast<const int32_t*>(a.query_start_loc.data);
  if (qsl[0] < 0) m.breaks();
  for (int32_t s = 0; s < a.num_seqs; ++s)
    if (qsl[s + 1] < qsl[s]) m.breaks();
  if (qsl[a.num_seqs] > T) m.breaks();
  result.broken = m.broken;
  if (!m.broken.empty()) return result;
  const __int128 max_context = static_cast<__int128>(a.block_tables.shape[1]) * page_size;
  for (int32_t s = 0; s < a.num_seqs; ++s) {
    const int64_t len = cl[s], q_len = int64_t{qsl[s + 1]} - qsl[s];
    if (len < 0 || len > max_context || q_len > len) {
      m.breaks();
      continue;
    }
    if (q_len == 0) continue;
    const int64_t first = a.sliding_window > 0 ? std::max<int64_t>(0, len - q_len - a.sliding_window + 1) : 0;
    for (int64_t page = first / page_size; page <= (len - 1) / page_size; ++page) {
      const int32_t entry = bt[s * tables.strides[0] + page];
      if (entry < 0 || entry >= P) m.breaks();
    }
  }
  result.broken = m.broken;
  return result;
}

// ---------------------------------------------------------------------------------------------------
// Drawing a call from the input.

struct Buffer {
  std::unique_ptr<uint8_t[]> memory;
  size_t bytes = 0;
  bool exact = false;  // the view's claim fits in the buffer
};

// Bytes a view claims (shape, strides as given or contiguous), or -1 when it is not a sane claim.
int64_t claimed_bytes(const rpa_tensor& t, int ndim) {
  const int64_t size = size_of(int_of(&t.dtype)) ? size_of(int_of(&t.dtype)) : 4;
  bool all_zero = true;
  for (int i = 0; i < ndim; ++i) all_zero = all_zero && t.strides[i] == 0;
  __int128 count = 1, last = 0;
  for (int i = ndim - 1; i >= 0; --i) {
    if (t.shape[i] <= 0) return -1;
    const __int128 stride = all_zero ? count : t.strides[i];
    if (stride < 0) return -1;
    last += stride * (t.shape[i] - 1);
    count *= t.shape[i];
    if (count > (__int128{1} << 62) || last > (__int128{1} << 62)) return -1;
  }
  const __int128 bytes = (last + 1) * size;
  return bytes > kMaxBufferBytes ? -1 : static_cast<int64_t>(bytes);
}

class Drawer {
 public:
  explicit Drawer(FuzzedDataProvider& in) : in_(in) {}

  // Mostly a small size, sometimes one from the edges.
  int64_t size(int64_t small_max) {
    const uint8_t b = in_.ConsumeIntegral<uint8_t>();
    static const int64_t edges[] = {0, -1, int64_t{1} << 31, int64_t{1} << 40, int64_t{1} << 52, int64_t{1} << 62,
                                    INT64_MAX, INT64_MIN, 65536, 32769, 3, 7, 16, 64, 100, 1000};
    if (b < 240) return 1 + b % small_max;
    return edges[b - 240];
  }

  int32_t dtype(int32_t natural) {
    const uint8_t b = in_.ConsumeIntegral<uint8_t>();
    if (b < 200) return natural;
    static const int32_t others[] = {0, 1, 2, 3, 4, 5, 6, 7, -1, 1000};
    return others[b % 10];
  }

  // Fills a tensor descriptor around `shape`, perturbing what the input says.
  rpa_tensor tensor(int ndim, const int64_t* shape, int32_t natural_dtype) {
    rpa_tensor t{};
    const int32_t dtype = this->dtype(natural_dtype);
    std::memcpy(&t.dtype, &dtype, sizeof dtype);
    const uint8_t ndim_byte = in_.ConsumeIntegral<uint8_t>();
    t.ndim = ndim_byte < 250 ? ndim : ndim_byte % 6;
    for (int i = 0; i < RPA_MAX_DIMS; ++i) t.shape[i] = i < ndim ? shape[i] : 0;
    if (in_.ConsumeIntegral<uint8_t>() >= 235) t.shape[in_.ConsumeIntegral<uint8_t>() % ndim] = size(8);
    const uint8_t mode = in_.ConsumeIntegral<uint8_t>();
    if (mode < 128) return t;  // all-zero strides: contiguous
    int64_t inner = 1;  // contiguous with gaps
    for (int i = ndim - 1; i >= 0; --i) {
      const int64_t gap = i == ndim - 1 ? 0 : in_.ConsumeIntegral<uint8_t>() % 3;
      t.strides[i] = i == ndim - 1 ? 1 : inner + gap;
      inner = t.strides[i] * std::max<int64_t>(1, t.shape[i]);
      if (inner > (int64_t{1} << 40)) inner = 1;
    }
    if (mode >= 224) {  // one stride anywhere
      static const int64_t strides[] = {0, -1, 1, 2, 3, 4, int64_t{1} << 40, INT64_MAX / 2};
      t.strides[in_.ConsumeIntegral<uint8_t>() % ndim] = strides[in_.ConsumeIntegral<uint8_t>() % 8];
    }
    return t;
  }

  double scalar(bool cap) {
    static const double table[] = {0, 0, 0, 0.125, 1, 0.5, 30, 1e39, -1e39, 1e300, 1e-39, 1e-300, -2, NAN,
                                   INFINITY, -INFINITY, FLT_MAX, FLT_MIN, FLT_MIN / 2, 3.4028235677973366e38,
                                   4.9e-324, -0.0};
    const uint8_t b = in_.ConsumeIntegral<uint8_t>();
    if (b < 230) return table[b % (cap ? 7 : 6)];  // 0 mostly, plain values
    if (b < 250) return table[b % 22];
    return in_.ConsumeFloatingPoint<double>();
  }

  uint8_t byte() { return in_.ConsumeIntegral<uint8_t>(); }
  uint64_t word() { return in_.ConsumeIntegral<uint64_t>(); }
  int32_t int32() { return in_.ConsumeIntegral<int32_t>(); }

 private:
  FuzzedDataProvider& in_;
};

// Gives `t` a buffer of exactly its claimed bytes (misaligned by `shift` bytes when asked), filled from
// `seed`; a view claiming too much gets a token buffer and can only be right if the call is refused.
void attach(rpa_tensor& t, int ndim, Buffer& buffer, uint8_t shift, uint64_t seed) {
  const int64_t claimed = claimed_bytes(t, ndim);
  buffer.exact = claimed >= 0;
  buffer.bytes = static_cast<size_t>(buffer.exact ? claimed : 16) + shift;
  buffer.memory.reset(new uint8_t[buffer.bytes]);
  for (size_t i = 0; i < buffer.bytes; ++i) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    buffer.memory[i] = static_cast<uint8_t>(seed >> 56);
  }
  t.data = buffer.memory.get() + shift;
}

// Element offsets of an output view (valid shape: the model accepted the call).
std::vector<bool> element_bytes(const rpa_tensor& t, int ndim, size_t buffer_bytes, size_t shift) {
  std::vector<bool> mask(buffer_bytes, false);
  const int64_t size = size_of(int_of(&t.dtype));
  int64_t strides[RPA_MAX_DIMS];
  bool all_zero = true;
  for (int i = 0; i < ndim; ++i) all_zero = all_zero && t.strides[i] == 0;
  int64_t inner = 1;
  for (int i = ndim - 1; i >= 0; --i) {
    strides[i] = all_zero ? inner : t.strides[i];
    inner *= t.shape[i];
  }
  int64_t index[RPA_MAX_DIMS] = {};
  for (;;) {
    int64_t offset = 0;
    for (int i = 0; i < ndim; ++i) offset += index[i] * strides[i];
    for (int64_t b = 0; b < size; ++b) mask[shift + offset * size + b] = true;
    int i = ndim - 1;
    while (i >= 0 && ++index[i] == t.shape[i]) index[i--] = 0;
    if (i < 0) break;
  }
  return mask;
}

rpa_context* context_of(rpa_backend backend) {
  rpa_context_options options;
  rpa_context_options_init(&options);
  options.backend = backend;
  options.num_threads = 2;
  rpa_context* context = nullptr;
  if (rpa_context_create(&options, &context) != RPA_STATUS_OK) fail(std::string("context: ") + rpa_last_error());
  return context;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static rpa_context* const contexts[] = {context_of(RPA_BACKEND_REFERENCE), context_of(RPA_BACKEND_SIMD)};
  FuzzedDataProvider in(data, size);
  Drawer draw(in);

  const int64_t T = draw.size(6), KVH = draw.size(3), QH = KVH * (1 + draw.byte() % 3), D = draw.size(9);
  const int64_t P = draw.size(6), page_size = draw.size(5), S = draw.size(4), W = draw.size(4);

  rpa_attention_args args;
  rpa_attention_args_init(&args);
  enum { kQueries, kKv, kK, kV, kLens, kTables, kStarts, kSinks, kOut, kLse, kBuffers };
  Buffer buffers[kBuffers];
  struct Slot {
    rpa_tensor* tensor;
    int ndim;
  } slots[kBuffers] = {{&args.queries, 3}, {&args.kv_pages, 4}, {&args.k_cache, 4}, {&args.v_cache, 4},
                       {&args.context_lens, 1}, {&args.block_tables, 2}, {&args.query_start_loc, 1},
                       {&args.softmax_aux, 2}, {&args.out, 3}, {&args.lse, 2}};
  const int64_t q_shape[] = {T, QH, D}, kv_shape[] = {P, page_size, 2 * KVH, D}, cache_shape[] = {P, page_size, KVH, D};
  const int64_t lens_shape[] = {S}, tables_shape[] = {S, W}, starts_shape[] = {S + 1}, lse_shape[] = {T, QH};
  const int32_t float_dtype = draw.byte() % 3, kv_dtype = draw.byte() % 3;
  args.queries = draw.tensor(3, q_shape, float_dtype);
  const uint8_t layout = draw.byte();
  if (layout < 160 || layout >= 250) args.kv_pages = draw.tensor(4, kv_shape, kv_dtype);
  if (layout >= 160) {
    args.k_cache = draw.tensor(4, cache_shape, kv_dtype);
    args.v_cache = draw.tensor(4, cache_shape, kv_dtype);
  }
  args.context_lens = draw.tensor(1, lens_shape, RPA_DTYPE_I32);
  args.block_tables = draw.tensor(2, tables_shape, RPA_DTYPE_I32);
  args.query_start_loc = draw.tensor(1, starts_shape, RPA_DTYPE_I32);
  if (draw.byte() >= 192) {
    const int64_t heads_options[] = {1, KVH, QH, 2};
    const int64_t sink_shape[] = {heads_options[draw.byte() % 4], 1 + draw.byte() % 3};
    args.softmax_aux = draw.tensor(2, sink_shape, draw.byte() % 3);
  }
  args.out = draw.tensor(3, q_shape, draw.byte() % 3);
  if (draw.byte() >= 96) args.lse = draw.tensor(2, lse_shape, RPA_DTYPE_F32);

  const uint64_t seed = draw.word();
  for (int i = 0; i < kBuffers; ++i) {
    rpa_tensor& t = *slots[i].tensor;
    if (t.ndim == 0 && t.shape[0] == 0) continue;  // absent
    const uint8_t shift = draw.byte() >= 248 ? 1 + draw.byte() % 3 : 0;
    attach(t, slots[i].ndim, buffers[i], shift, seed + i);
  }
  // Float data: finite values in [-2, 2] mostly (NaN/Inf where the random bytes say so in sinks only).
  for (int i : {kQueries, kKv, kK, kV, kOut}) {
    Buffer& b = buffers[i];
    if (!b.memory || int_of(&slots[i].tensor->dtype) != 0) continue;
    for (size_t j = 0; j + 4 <= b.bytes; j += 4) {
      const float x = static_cast<float>(static_cast<int8_t>(b.memory[j])) / 64.0f;
      std::memcpy(&b.memory[j], &x, 4);
    }
  }
  // Metadata: plausible values through the views' own strides, then a few raw edits.
  auto metadata = [&](int slot) -> int32_t* {
    rpa_tensor& t = *slots[slot].tensor;
    return buffers[slot].exact && int_of(&t.dtype) == RPA_DTYPE_I32 &&
                   reinterpret_cast<uintptr_t>(t.data) % 4 == 0 && t.ndim == slots[slot].ndim
               ? static_cast<int32_t*>(t.data)
               : nullptr;
  };
  int32_t *lens = metadata(kLens), *tables = metadata(kTables), *starts = metadata(kStarts);
  const int64_t n_lens = args.context_lens.shape[0], n_starts = args.query_start_loc.shape[0];
  const int64_t table_rows = args.block_tables.shape[0], table_cols = args.block_tables.shape[1];
  const bool tables_contiguous = args.block_tables.strides[0] == 0 && args.block_tables.strides[1] == 0;
  const int64_t table_stride = tables_contiguous ? table_cols : args.block_tables.strides[0];
  const int64_t lens_stride = args.context_lens.strides[0] ? args.context_lens.strides[0] : 1;
  const int64_t starts_stride = args.query_start_loc.strides[0] ? args.query_start_loc.strides[0] : 1;
  if (starts && lens_stride == 1 && starts_stride == 1) {
    int32_t row = 0;
    for (int64_t s = 0; s < n_starts; ++s) {
      starts[s] = row;
      const int32_t q_len = draw.byte() % 3;
      if (lens && s < n_lens) lens[s] = q_len + draw.byte() % 12;
      row = static_cast<int32_t>(std::min<int64_t>(row + q_len, T));
    }
  }
  if (tables && (tables_contiguous || args.block_tables.strides[1] == 1) && table_cols <= (1 << 16))
    for (int64_t r = 0; r < std::min<int64_t>(table_rows, 64); ++r)
      for (int64_t c = 0; c < table_cols; ++c)
        tables[r * table_stride + c] = static_cast<int32_t>(P > 0 && P < (1 << 30) ? draw.byte() % P : 0);
  for (int edits = draw.byte() % 4; edits > 0; --edits) {
    const uint8_t which = draw.byte();
    int32_t* target = which % 3 == 0 ? lens : which % 3 == 1 ? tables : starts;
    const int64_t count = which % 3 == 0 ? n_lens : which % 3 == 1 ? 1 : n_starts;
    if (target && count > 0 && count < (1 << 16)) target[draw.byte() % count] = draw.int32();
  }

  args.num_seqs = draw.byte() < 200 ? static_cast<int32_t>(std::min<int64_t>(S, INT32_MAX)) : draw.int32() % 6;
  args.softmax_scale = draw.scalar(false);
  args.logits_soft_cap = draw.scalar(true);
  static const int32_t windows[] = {0, 0, 0, 1, 2, 5, -1, INT32_MAX, INT32_MIN, 3};
  args.sliding_window = windows[draw.byte() % 10];
  const uint8_t memory_byte = draw.byte();
  const int32_t memory = memory_byte < 240 ? 0 : memory_byte < 248 ? 1 : memory_byte % 2 ? -1 : 7;
  std::memcpy(&args.memory, &memory, sizeof memory);
  const uint8_t size_byte = draw.byte();
  if (size_byte >= 248) {
    static const size_t sizes[] = {0, 4, size_t{1} << 21, 8, 16, 100, sizeof(size_t) + sizeof(rpa_tensor), 300};
    args.struct_size = sizes[size_byte % 8];
  }
  // Outputs pointing into other buffers (always inside the other view's bytes, so they overlap it).
  bool aliased[kBuffers] = {};
  const uint8_t alias = draw.byte();
  if (alias >= 224) {
    static const int pairs[][2] = {{kOut, kQueries}, {kLse, kOut}, {kOut, kKv}, {kLse, kTables},
                                   {kOut, kSinks}, {kLse, kQueries}, {kOut, kV}, {kLse, kStarts}};
    const int* pair = pairs[alias % 8];
    Buffer& target = buffers[pair[1]];
    rpa_tensor& output = *slots[pair[0]].tensor;
    if (target.memory && output.data && target.exact) {
      output.data = target.memory.get() + (draw.byte() * 4) % (target.bytes & ~size_t{3} ? target.bytes & ~size_t{3} : 4);
      aliased[pair[0]] = true;  // its own buffer no longer holds it; the overlap rule refuses the call
    }
  }

  bool readable = true;
  for (int i = 0; i < kBuffers; ++i) readable = readable && (!buffers[i].memory || buffers[i].exact || aliased[i]);
  const Prediction prediction = predict(&args, readable);
  // A view whose buffer does not back it must never be read: skip calls that would read one.
  if (prediction.unknown || (prediction.sinks_read && !buffers[kSinks].exact)) return 0;
  const std::set<rpa_status>& expected = prediction.broken;

  for (rpa_context* context : contexts) {
    std::vector<std::vector<uint8_t>> before(kBuffers);
    for (int i = 0; i < kBuffers; ++i)
      if (buffers[i].memory) before[i].assign(buffers[i].memory.get(), buffers[i].memory.get() + buffers[i].bytes);
    const rpa_status status = rpa_attention(context, &args);
    const std::string message = rpa_last_error();
    rpa_backend backend;
    rpa_context_get_backend(context, &backend);
    const std::string where = std::string(rpa_backend_string(backend)) + ": ";
    if (expected.empty() && status != RPA_STATUS_OK)
      fail(where + "the model accepts the call, the library answers " + rpa_status_string(status) + ": " + message);
    if (!expected.empty() && status == RPA_STATUS_OK) fail(where + "the model rejects the call, the library accepts it");
    if (!expected.empty() && !expected.count(status))
      fail(where + "status " + rpa_status_string(status) + " is not one the model expects: " + message);
    if (status != RPA_STATUS_OK && message.find("argument '") == std::string::npos)
      fail(where + "the message names no argument: " + message);
    for (int i = 0; i < kBuffers; ++i) {
      if (!buffers[i].memory) continue;
      const uint8_t* now = buffers[i].memory.get();
      const bool output = (i == kOut || i == kLse) && status == RPA_STATUS_OK;
      if (!output) {
        if (std::memcmp(now, before[i].data(), buffers[i].bytes) != 0)
          fail(where + "buffer " + std::to_string(i) + (status == RPA_STATUS_OK ? " (an input)" : " (a rejected call)") +
               " was written");
        continue;
      }
      const rpa_tensor& t = *slots[i].tensor;
      const size_t shift = static_cast<size_t>(static_cast<const uint8_t*>(t.data) - now);
      const std::vector<bool> mask = element_bytes(t, slots[i].ndim, buffers[i].bytes, shift);
      for (size_t b = 0; b < buffers[i].bytes; ++b)
        if (!mask[b] && now[b] != before[i][b]) fail(where + "output byte " + std::to_string(b) + " outside the view was written");
    }
  }
  return 0;
}
