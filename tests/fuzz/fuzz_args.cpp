// libFuzzer harness over the whole C ABI's argument space: rpa_attention_args through rpa_attention and
// through rpa_plan_create + rpa_plan_run, then rpa_write_kv into the drawn cache and rpa_merge_states.
// Every tensor gets a buffer of exactly the bytes its view claims (ASan sees any access outside);
// shapes, strides, dtypes, enums, scalars, metadata and pointers are drawn from the input, and an
// independent model of the README's validation rules predicts the answer:
//   - a call the model accepts must succeed, change no input, and write no output byte outside the
//     views' elements (plan + run bitwise equal to rpa_attention);
//   - a call the model rejects must fail with a status of the rules it breaks, name an argument, and
//     write nothing; rpa_plan_create must fail exactly when a rule it checks is broken.
// Each input runs on the reference and the simd backend. Build: tools/sanitize.sh (Meson option fuzz).
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "rpa/rpa.h"

namespace {

constexpr int64_t kMaxBufferBytes = int64_t{1} << 18;  // views claiming more get a token buffer

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

bool quantised(int32_t dtype) { return dtype >= 3 && dtype <= 5; }

// a * b + c for drawing shapes around the edges, saturated at the int64 range.
int64_t saturated(int64_t a, int64_t b, int64_t c = 0) {
  const __int128 x = static_cast<__int128>(a) * b + c;
  return x > INT64_MAX ? INT64_MAX : x < INT64_MIN ? INT64_MIN : static_cast<int64_t>(x);
}

// Which rules apply: those rpa_plan_create checks, those rpa_plan_run checks, or both (rpa_attention).
// The plan reads the metadata and every layout (float data may be NULL then); a run reads the float
// tensors, the scalars and the scales, and checks the layouts again (not the metadata).
enum class Phase { plan, run, call };

// What the model knows of one tensor after its own rules: broken, or its strides and byte span.
struct View {
  bool ok = false;
  int64_t strides[RPA_MAX_DIMS] = {};
  uintptr_t begin = 0, end = 0;  // no bytes without data (a plan's float tensors)
};

struct Model {
  std::set<rpa_status> broken;  // the statuses of the rules the call breaks
  std::string lines;            // the model's lines that found them (for the failure message)
  void breaks(rpa_status status = RPA_STATUS_INVALID_ARGUMENT, int line = __builtin_LINE()) {
    broken.insert(status);
    lines += " " + std::to_string(line);
  }
};

enum class Role { floating, kv, metadata, scale };

bool present(const rpa_tensor& t) { return t.data != nullptr || t.ndim != 0; }

// Element-level rules of one present tensor: data, ndim, dtype, sizes, strides, alignment, overflows.
// `need_data` false: a plan's float tensor, whose data may be NULL.
View check_view(Model& m, const rpa_tensor& t, int ndim, Role role, bool need_data = true) {
  View v;
  if (!t.data && need_data) return m.breaks(), v;
  if (t.ndim != ndim) return m.breaks(), v;
  const int32_t dtype = int_of(&t.dtype);
  const bool valid_dtype = role == Role::metadata ? dtype == 6
                           : role == Role::scale  ? dtype == 0
                           : role == Role::kv     ? (dtype >= 0 && dtype <= 5)
                                                  : (dtype >= 0 && dtype <= 2);
  if (!valid_dtype) return m.breaks(), v;
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
  v.ok = true;
  if (!t.data) return v;
  v.begin = reinterpret_cast<uintptr_t>(t.data);
  if (static_cast<__int128>(v.begin) + bytes > static_cast<__int128>(UINTPTR_MAX)) return m.breaks(), View{};
  v.end = v.begin + static_cast<uintptr_t>(bytes);
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
  std::string lines;            // where the model found them
  double work = 0;              // (query row, key, d) triples of the sequences: the reference's work
  bool reads_unbacked = false;  // the library may read a view that its buffer does not back
};

// The KV scales' rules (a run's): present only with a quantised cache, f32 [1] or [KVH], finite > 0.
View check_scale(Model& m, const rpa_tensor& t, bool kv_ok, int32_t kv_dtype, int64_t KVH) {
  if (!present(t)) return View{};
  if (!t.data) return m.breaks(), View{};
  if (kv_ok && !quantised(kv_dtype)) return m.breaks(), View{};
  View v = check_view(m, t, 1, Role::scale);
  if (v.ok && kv_ok && t.shape[0] != 1 && t.shape[0] != KVH) return m.breaks(), View{};
  return v;
}

void check_scale_values(Model& m, const rpa_tensor& t, const View& v) {
  if (!v.ok) return;
  for (int64_t i = 0; i < t.shape[0]; ++i) {
    const float x = load(t.data, 0, i * v.strides[0]);
    if (!std::isfinite(x) || !(x > 0)) m.breaks();
  }
}

// What the README's rules say of this call on a CPU backend. `backed`: every present buffer backs its
// view, so the library may read through every view it accepts.
Prediction predict(const rpa_attention_args* given, Phase phase, bool backed) {
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
  const bool data_optional = phase == Phase::plan;

  const View q = check_view(m, a.queries, 3, Role::floating, !data_optional);
  const int64_t T = a.queries.shape[0], QH = a.queries.shape[1], D = a.queries.shape[2];
  if (q.ok && static_cast<__int128>(T) * QH > INT32_MAX) m.breaks();
  View kv, k, v;
  int64_t KVH = 0, P = 0, page_size = 0;
  int32_t kv_dtype = -1;
  bool kv_ok = false;
  if (present(a.kv_pages)) {
    if (present(a.k_cache) || present(a.v_cache)) m.breaks();
    kv = check_view(m, a.kv_pages, 4, Role::kv, !data_optional);
    if (kv.ok && a.kv_pages.shape[2] % 2) m.breaks();
    if (kv.ok && q.ok && a.kv_pages.shape[3] != D) m.breaks();
    kv_ok = kv.ok && a.kv_pages.shape[2] % 2 == 0;
    KVH = a.kv_pages.shape[2] / 2, P = a.kv_pages.shape[0], page_size = a.kv_pages.shape[1];
    kv_dtype = int_of(&a.kv_pages.dtype);
  } else {
    if (!present(a.k_cache) && !present(a.v_cache)) m.breaks();
    k = check_view(m, a.k_cache, 4, Role::kv, !data_optional);
    v = check_view(m, a.v_cache, 4, Role::kv, !data_optional);
    if (k.ok && v.ok) {
      for (int i = 0; i < 4; ++i)
        if (a.k_cache.shape[i] != a.v_cache.shape[i]) m.breaks();
      if (int_of(&a.k_cache.dtype) != int_of(&a.v_cache.dtype)) m.breaks();
      if (q.ok && a.k_cache.shape[3] != D) m.breaks();
    }
    kv_ok = k.ok && v.ok;
    KVH = a.k_cache.shape[2], P = a.k_cache.shape[0], page_size = a.k_cache.shape[1];
    kv_dtype = int_of(&a.k_cache.dtype);
  }
  if (q.ok && kv_ok && KVH > 0 && QH % KVH) m.breaks();

  const View out = check_view(m, a.out, 3, Role::floating, !data_optional);
  if (out.ok && q.ok && (a.out.shape[0] != T || a.out.shape[1] != QH || a.out.shape[2] != D)) m.breaks();
  if (out.ok && !distinct_elements(a.out, out, 3)) m.breaks();
  View lse;
  if (present(a.lse)) {
    lse = check_view(m, a.lse, 2, Role::floating, !data_optional);
    if (lse.ok && int_of(&a.lse.dtype) != 0) m.breaks();
    if (lse.ok && q.ok && (a.lse.shape[0] != T || a.lse.shape[1] != QH)) m.breaks();
    if (lse.ok && !distinct_elements(a.lse, lse, 2)) m.breaks();
  }
  const int32_t memory = int_of(&a.memory);
  if (memory != 0) m.breaks();  // not host: invalid, or device memory on a CPU backend
  if (int_of(&a.metadata_memory) != 0) m.breaks();  // not host: invalid, or device metadata without device memory

  View sinks;
  if (present(a.softmax_aux)) {
    sinks = check_view(m, a.softmax_aux, 2, Role::floating, !data_optional);
    if (sinks.ok && kv_ok) {
      const int64_t heads = a.softmax_aux.shape[0];
      if (heads != 1 && heads != KVH && heads != QH) m.breaks();
    }
  }
  if (a.sliding_window < 0) m.breaks();

  const View lens = check_view(m, a.context_lens, 1, Role::metadata);
  const View tables = check_view(m, a.block_tables, 2, Role::metadata);
  const View starts = check_view(m, a.query_start_loc, 1, Role::metadata);
  const int64_t S = a.context_lens.shape[0];
  if (lens.ok && tables.ok && a.block_tables.shape[0] != S) m.breaks();
  if (lens.ok && starts.ok && a.query_start_loc.shape[0] != S + 1) m.breaks();

  // Every layout rule holds: from here on the library reads through the views.
  const bool layouts_hold = m.broken.empty();
  if (layouts_hold && !backed) {
    result.reads_unbacked = true;
    return result;
  }

  // The metadata's contents (a plan's rules).
  if (phase != Phase::run && layouts_hold) {
    const auto* cl = static_cast<const int32_t*>(a.context_lens.data);
    const auto* bt = static_cast<const int32_t*>(a.block_tables.data);
    const auto* qsl = static_cast<const int32_t*>(a.query_start_loc.data);
    if (a.num_seqs < 0 || a.num_seqs > S) {
      m.breaks();
    } else {
      bool starts_ok = qsl[0] >= 0;
      for (int32_t s = 0; s < a.num_seqs; ++s) starts_ok = starts_ok && qsl[(s + 1) * starts.strides[0]] >= qsl[s * starts.strides[0]];
      starts_ok = starts_ok && qsl[a.num_seqs * starts.strides[0]] <= T;
      if (!starts_ok) m.breaks();
      const __int128 max_context = static_cast<__int128>(a.block_tables.shape[1]) * page_size;
      for (int32_t s = 0; starts_ok && s < a.num_seqs; ++s) {
        const int64_t len = cl[s * lens.strides[0]];
        const int64_t q_len = int64_t{qsl[(s + 1) * starts.strides[0]]} - qsl[s * starts.strides[0]];
        if (len < 0 || len > max_context || q_len > len) {
          m.breaks();
          continue;
        }
        if (q_len == 0) continue;
        result.work += static_cast<double>(q_len) * len * QH * D;
        const int64_t first = a.sliding_window > 0 ? std::max<int64_t>(0, len - q_len - a.sliding_window + 1) : 0;
        for (int64_t page = first / page_size; page <= (len - 1) / page_size; ++page) {
          const int32_t entry = bt[s * tables.strides[0] + page];
          if (entry < 0 || entry >= P) m.breaks();
        }
      }
    }
    // Outputs given at plan time share no byte with the metadata (host memory).
    for (const View* output : std::initializer_list<const View*>{&out, &lse})
      for (const View* input : std::initializer_list<const View*>{&lens, &tables, &starts})
        if (overlap(*output, *input)) m.breaks();
  }

  // A run's rules: scalars, scales, sink values, overlaps between the outputs and the float inputs.
  if (phase != Phase::plan) {
    if (a.softmax_scale != 0 && !normal_f32(a.softmax_scale)) m.breaks();
    if (a.logits_soft_cap != 0 && !(a.logits_soft_cap > 0 && normal_f32(a.logits_soft_cap))) m.breaks();
    const View k_scale = check_scale(m, a.k_scale, kv_ok, kv_dtype, KVH);
    const View v_scale = check_scale(m, a.v_scale, kv_ok, kv_dtype, KVH);
    if (layouts_hold) {
      check_scale_values(m, a.k_scale, k_scale);
      check_scale_values(m, a.v_scale, v_scale);
      if (sinks.ok)
        for (int64_t h = 0; h < a.softmax_aux.shape[0]; ++h)
          for (int64_t n = 0; n < a.softmax_aux.shape[1]; ++n) {
            const float x = load(a.softmax_aux.data, int_of(&a.softmax_aux.dtype),
                                 h * sinks.strides[0] + n * sinks.strides[1]);
            if (std::isnan(x) || x == INFINITY) m.breaks();
          }
    }
    for (const View* output : std::initializer_list<const View*>{&out, &lse})
      for (const View* input : std::initializer_list<const View*>{&q, &kv, &k, &v, &sinks, &k_scale, &v_scale})
        if (overlap(*output, *input)) m.breaks();
    if (overlap(out, lse)) m.breaks();
  }
  result.broken = m.broken;
  result.lines = m.lines;
  return result;
}

// ---------------------------------------------------------------------------------------------------
// Drawing a call from the input.

struct Buffer {
  std::unique_ptr<uint8_t[]> memory;
  size_t bytes = 0;
  bool exact = false;  // the view's claim fits in the buffer
  std::vector<uint8_t> saved;
  void save() { saved.assign(memory.get(), memory.get() + bytes); }
  void restore() { std::memcpy(memory.get(), saved.data(), bytes); }
  bool changed() const { return std::memcmp(memory.get(), saved.data(), bytes) != 0; }
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
      const __int128 next = static_cast<__int128>(t.strides[i]) * std::max<int64_t>(1, t.shape[i]);
      inner = next > (int64_t{1} << 40) ? 1 : static_cast<int64_t>(next);
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

  // A KV scale: a plain positive value mostly, sometimes an edge (0, negative, NaN, inf, subnormal).
  float scale() {
    static const float table[] = {1, 0.5f, 2, 0.0625f, 1, 3, 0, -1, NAN, INFINITY, FLT_MIN / 2, FLT_MAX, -0.0f, 1e-30f};
    const uint8_t b = in_.ConsumeIntegral<uint8_t>();
    return table[b < 240 ? b % 6 : b % 14];
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

// Replaces every aligned 4-byte word of an f32 buffer with a small finite value (or `fixed`).
void fill_floats(Buffer& b, bool use_fixed = false, float fixed = 0) {
  for (size_t j = 0; j + 4 <= b.bytes; j += 4) {
    const float x = use_fixed ? fixed : static_cast<float>(static_cast<int8_t>(b.memory[j])) / 64.0f;
    std::memcpy(&b.memory[j], &x, 4);
  }
}

// The bytes of a buffer that a view's elements cover (the view's rules hold).
std::vector<bool> element_bytes(const rpa_tensor& t, int ndim, const Buffer& buffer) {
  std::vector<bool> mask(buffer.bytes, false);
  const size_t shift = static_cast<size_t>(static_cast<const uint8_t*>(t.data) - buffer.memory.get());
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

// Checks one call's answer against the model's prediction.
void expect(const std::string& where, rpa_status status, const std::set<rpa_status>& broken,
            const std::string& lines = "") {
  const std::string message = rpa_last_error();
  if (broken.empty() && status != RPA_STATUS_OK)
    fail(where + ": the model accepts the call, the library answers " + rpa_status_string(status) + ": " + message);
  if (!broken.empty() && status == RPA_STATUS_OK)
    fail(where + ": the model rejects the call (lines" + lines + "), the library accepts it");
  if (!broken.empty() && !broken.count(status))
    fail(where + ": status " + rpa_status_string(status) + " is not one the model expects: " + message);
  if (status != RPA_STATUS_OK && message.find("argument '") == std::string::npos)
    fail(where + ": the message names no argument: " + message);
}

struct Slot {
  rpa_tensor* tensor;
  int ndim;
  bool output;
};

// After a call: inputs unchanged; outputs (when the call succeeded) changed only inside their views.
void expect_writes(const std::string& where, bool ok, std::vector<Buffer>& buffers, const std::vector<Slot>& slots) {
  for (size_t i = 0; i < buffers.size(); ++i) {
    Buffer& b = buffers[i];
    if (!b.memory || !b.changed()) continue;
    if (!ok || !slots[i].output) fail(where + ": buffer " + std::to_string(i) + (ok ? " (an input)" : " (a rejected call)") + " was written");
    const std::vector<bool> mask = element_bytes(*slots[i].tensor, slots[i].ndim, b);
    for (size_t j = 0; j < b.bytes; ++j)
      if (!mask[j] && b.memory[j] != b.saved[j])
        fail(where + ": byte " + std::to_string(j) + " of buffer " + std::to_string(i) + " outside the view was written");
  }
}

// rpa_write_kv into the attention call's cache (and with its scales): keys/values [N, KVH, D] and a
// slot mapping drawn around it. The README's rules of rpa_write_kv, then the writes: an accepted call
// changes only the cache views' elements and, for f32 keys, values and cache, exactly the mapped slots.
void fuzz_write_kv(Drawer& draw, rpa_context* const* contexts, const rpa_attention_args& attention,
                   std::vector<Buffer>& attention_buffers, const std::vector<Slot>& attention_slots) {
  const bool combined = present(attention.kv_pages);
  const rpa_tensor& cache = combined ? attention.kv_pages : attention.k_cache;
  const int64_t KVH = combined ? cache.shape[2] / 2 : cache.shape[2], D = cache.shape[3];
  const int64_t N = draw.size(5);
  rpa_write_kv_args args;
  rpa_write_kv_args_init(&args);
  args.kv_pages = attention.kv_pages, args.k_cache = attention.k_cache, args.v_cache = attention.v_cache;
  args.k_scale = attention.k_scale, args.v_scale = attention.v_scale;
  const int64_t kv_shape[] = {N, KVH, D}, map_shape[] = {N};
  args.keys = draw.tensor(3, kv_shape, draw.byte() % 3);
  args.values = draw.tensor(3, kv_shape, draw.byte() % 3);
  args.slot_mapping = draw.tensor(1, map_shape, RPA_DTYPE_I32);
  const uint8_t memory_byte = draw.byte();
  const int32_t memory = memory_byte < 248 ? 0 : memory_byte % 2 ? 1 : 9;
  std::memcpy(&args.memory, &memory, sizeof memory);

  std::vector<Buffer> buffers(3);
  const std::vector<Slot> own = {{&args.keys, 3, false}, {&args.values, 3, false}, {&args.slot_mapping, 1, false}};
  const uint64_t seed = draw.word();
  for (int i = 0; i < 3; ++i) {
    if (claimed_bytes(*own[i].tensor, own[i].ndim) < 0) return;  // too large to back: not drawn here
    attach(*own[i].tensor, own[i].ndim, buffers[i], draw.byte() >= 250 ? 1 : 0, seed + i);
    if (int_of(&own[i].tensor->dtype) == 0 && i < 2) fill_floats(buffers[i]);
  }
  for (const Buffer& b : attention_buffers)
    if (b.memory && !b.exact) return;
  // Slots: mostly in range or -1, sometimes anything.
  auto* slots = static_cast<int32_t*>(args.slot_mapping.data);
  const bool slots_plain = int_of(&args.slot_mapping.dtype) == RPA_DTYPE_I32 && args.slot_mapping.ndim == 1 &&
                           reinterpret_cast<uintptr_t>(slots) % 4 == 0;
  const int64_t slot_stride = args.slot_mapping.strides[0] ? args.slot_mapping.strides[0] : 1;
  const int64_t num_slots = saturated(cache.shape[0], cache.shape[1]);
  if (slots_plain && slot_stride > 0 && cache.shape[0] > 0 && cache.shape[1] > 0 && num_slots < (1 << 30))
    for (int64_t i = 0; i < args.slot_mapping.shape[0]; ++i) {
      const uint8_t b = draw.byte();
      slots[i * slot_stride] = b < 200 ? static_cast<int32_t>(b % num_slots) : b < 240 ? -1 : draw.int32();
    }

  // The model.
  Model m;
  const View keys = check_view(m, args.keys, 3, Role::floating);
  const View values = check_view(m, args.values, 3, Role::floating);
  if (keys.ok && values.ok)
    for (int i = 0; i < 3; ++i)
      if (args.values.shape[i] != args.keys.shape[i]) m.breaks();
  View kv, k, v;
  bool cache_ok = false;
  int64_t cache_KVH = 0, P = 0, page_size = 0;
  int32_t kv_dtype = -1;
  if (present(args.kv_pages)) {
    if (present(args.k_cache) || present(args.v_cache)) m.breaks();
    kv = check_view(m, args.kv_pages, 4, Role::kv);
    if (kv.ok && args.kv_pages.shape[2] % 2) m.breaks();
    cache_ok = kv.ok && args.kv_pages.shape[2] % 2 == 0;
    cache_KVH = args.kv_pages.shape[2] / 2, P = args.kv_pages.shape[0], page_size = args.kv_pages.shape[1];
    kv_dtype = int_of(&args.kv_pages.dtype);
  } else {
    if (!present(args.k_cache) && !present(args.v_cache)) m.breaks();
    k = check_view(m, args.k_cache, 4, Role::kv);
    v = check_view(m, args.v_cache, 4, Role::kv);
    if (k.ok && v.ok) {
      for (int i = 0; i < 4; ++i)
        if (args.k_cache.shape[i] != args.v_cache.shape[i]) m.breaks();
      if (int_of(&args.k_cache.dtype) != int_of(&args.v_cache.dtype)) m.breaks();
    }
    cache_ok = k.ok && v.ok;
    cache_KVH = args.k_cache.shape[2], P = args.k_cache.shape[0], page_size = args.k_cache.shape[1];
    kv_dtype = int_of(&args.k_cache.dtype);
  }
  if (keys.ok && cache_ok && (args.keys.shape[1] != cache_KVH || args.keys.shape[2] != (combined ? args.kv_pages : args.k_cache).shape[3]))
    m.breaks();
  const View k_scale = check_scale(m, args.k_scale, cache_ok, kv_dtype, cache_KVH);
  const View v_scale = check_scale(m, args.v_scale, cache_ok, kv_dtype, cache_KVH);
  if (memory != 0) m.breaks();
  const View mapping = check_view(m, args.slot_mapping, 1, Role::metadata);
  if (mapping.ok && keys.ok && args.slot_mapping.shape[0] != args.keys.shape[0]) m.breaks();
  if (m.broken.empty()) {
    check_scale_values(m, args.k_scale, k_scale);
    check_scale_values(m, args.v_scale, v_scale);
    for (int64_t i = 0; i < args.slot_mapping.shape[0]; ++i) {
      const int32_t slot = slots[i * mapping.strides[0]];
      if (slot != -1 && (slot < 0 || slot >= P * page_size)) m.breaks();
    }
  }
  // Overlaps of the cache with the inputs are not the model's: separate buffers never overlap.

  std::vector<Slot> all_slots = attention_slots;
  for (Slot& s : all_slots) s.output = s.tensor == &attention.kv_pages || s.tensor == &attention.k_cache ||
                                       s.tensor == &attention.v_cache;
  // The cache descriptors in `args` are copies: point the masks at them.
  for (Slot& s : all_slots) {
    if (s.tensor == &attention.kv_pages) s.tensor = &args.kv_pages;
    if (s.tensor == &attention.k_cache) s.tensor = &args.k_cache;
    if (s.tensor == &attention.v_cache) s.tensor = &args.v_cache;
  }
  for (const Slot& s : own) all_slots.push_back(s);
  std::vector<Buffer*> everything;
  for (Buffer& b : attention_buffers) everything.push_back(&b);
  for (Buffer& b : buffers) everything.push_back(&b);

  const bool check_values = m.broken.empty() && kv_dtype == 0 && int_of(&args.keys.dtype) == 0 &&
                            int_of(&args.values.dtype) == 0 &&
                            (combined ? distinct_elements(args.kv_pages, kv, 4)
                                      : distinct_elements(args.k_cache, k, 4) && distinct_elements(args.v_cache, v, 4) &&
                                            !overlap(k, v));
  for (int c = 0; c < 2; ++c) {
    for (Buffer* b : everything)
      if (b->memory) b->save();
    rpa_backend backend;
    rpa_context_get_backend(contexts[c], &backend);
    const std::string where = std::string("rpa_write_kv on ") + rpa_backend_string(backend);
    const rpa_status status = rpa_write_kv(contexts[c], &args);
    expect(where, status, m.broken, m.lines);
    // Masks need the buffers as vectors of the same shape: check them one by one.
    for (size_t i = 0; i < everything.size(); ++i) {
      Buffer& b = *everything[i];
      if (!b.memory || !b.changed()) continue;
      if (status != RPA_STATUS_OK || !all_slots[i].output) fail(where + ": buffer " + std::to_string(i) + " was written");
      const std::vector<bool> mask = element_bytes(*all_slots[i].tensor, all_slots[i].ndim, b);
      for (size_t j = 0; j < b.bytes; ++j)
        if (!mask[j] && b.memory[j] != b.saved[j]) fail(where + ": byte " + std::to_string(j) + " outside the cache view was written");
    }
    if (check_values) {
      // Slot s of head h: the last token mapped to s wrote its key and value there, other slots kept theirs.
      std::vector<int64_t> writer(static_cast<size_t>(P * page_size), -1);
      for (int64_t i = 0; i < args.slot_mapping.shape[0]; ++i)
        if (slots[i * mapping.strides[0]] >= 0) writer[static_cast<size_t>(slots[i * mapping.strides[0]])] = i;
      const View& kview = combined ? kv : k;
      const View& vview = combined ? kv : v;
      // The cache buffers: kv_pages, or k_cache and v_cache (the attention's slots 1, 2 and 3).
      const rpa_tensor& kt = combined ? args.kv_pages : args.k_cache;
      const rpa_tensor& vt = combined ? args.kv_pages : args.v_cache;
      const Buffer& kb = attention_buffers[combined ? 1 : 2];
      const Buffer& vb = attention_buffers[combined ? 1 : 3];
      // The 4 bytes of element `at` of view `t` in `b`, now or as saved before the call.
      auto element = [](const rpa_tensor& t, const Buffer& b, int64_t at, bool before) {
        const size_t offset = static_cast<size_t>(static_cast<const uint8_t*>(t.data) - b.memory.get()) + 4 * at;
        uint32_t bits;
        std::memcpy(&bits, (before ? b.saved.data() : b.memory.get()) + offset, 4);
        return bits;
      };
      auto input = [](const rpa_tensor& t, const View& view, int64_t i, int64_t h, int64_t d) {
        uint32_t bits;
        std::memcpy(&bits, static_cast<const uint8_t*>(t.data) + 4 * (i * view.strides[0] + h * view.strides[1] + d), 4);
        return bits;
      };
      for (int64_t slot = 0; slot < P * page_size; ++slot)
        for (int64_t h = 0; h < cache_KVH; ++h)
          for (int64_t d = 0; d < D; ++d) {
            const int64_t page = slot / page_size, offset = slot % page_size;
            const int64_t k_at = page * kview.strides[0] + offset * kview.strides[1] + (combined ? 2 * h : h) * kview.strides[2] + d;
            const int64_t v_at = page * vview.strides[0] + offset * vview.strides[1] + (combined ? 2 * h + 1 : h) * vview.strides[2] + d;
            const int64_t i = writer[static_cast<size_t>(slot)];
            const uint32_t k_want = i < 0 ? element(kt, kb, k_at, true) : input(args.keys, keys, i, h, d);
            const uint32_t v_want = i < 0 ? element(vt, vb, v_at, true) : input(args.values, values, i, h, d);
            if (element(kt, kb, k_at, false) != k_want || element(vt, vb, v_at, false) != v_want)
              fail(where + ": slot " + std::to_string(slot) + " head " + std::to_string(h) +
                   (i < 0 ? " was written though no token maps to it" : " does not hold token " + std::to_string(i)));
          }
    }
  }
}

// rpa_merge_states over six drawn tensors (out/lse in place on out_a/lse_a or out_b/lse_b now and then):
// the README's rules for them, no write outside out and lse, nothing written when refused. The drawn
// buffers are separate, so only the in-place aliases share bytes: the overlap rules always pass.
void fuzz_merge(Drawer& draw, rpa_context* const* contexts) {
  const int64_t T = draw.size(4), H = draw.size(3), D = draw.size(6);
  const int64_t state_shape[] = {T, H, D}, lse_shape[] = {T, H};
  rpa_merge_args args;
  rpa_merge_args_init(&args);
  args.out_a = draw.tensor(3, state_shape, draw.byte() % 3);
  args.lse_a = draw.tensor(2, lse_shape, RPA_DTYPE_F32);
  args.out_b = draw.tensor(3, state_shape, draw.byte() % 3);
  args.lse_b = draw.tensor(2, lse_shape, RPA_DTYPE_F32);
  args.out = draw.tensor(3, state_shape, draw.byte() % 3);
  if (draw.byte() >= 64) args.lse = draw.tensor(2, lse_shape, RPA_DTYPE_F32);
  const uint8_t memory_byte = draw.byte();
  const int32_t memory = memory_byte < 248 ? 0 : memory_byte % 2 ? 1 : -3;
  std::memcpy(&args.memory, &memory, sizeof memory);
  std::vector<Buffer> buffers(6);
  std::vector<Slot> slots = {{&args.out_a, 3, false}, {&args.lse_a, 2, false}, {&args.out_b, 3, false},
                             {&args.lse_b, 2, false}, {&args.out, 3, true},    {&args.lse, 2, true}};
  const uint64_t seed = draw.word();
  for (int i = 0; i < 6; ++i) {
    rpa_tensor& t = *slots[i].tensor;
    if (t.ndim == 0 && t.shape[0] == 0) continue;  // absent
    if (claimed_bytes(t, slots[i].ndim) < 0) return;  // too large to back
    if (draw.byte() >= 252) continue;                  // present, data NULL
    attach(t, slots[i].ndim, buffers[i], draw.byte() >= 250 ? 2 : 0, seed + i);
    if (int_of(&t.dtype) != 0) continue;
    if (i % 2 == 0) {
      fill_floats(buffers[i]);
    } else {  // log-sum-exps: finite mostly, -inf (no key) often, NaN and +inf now and then
      static const float lses[] = {0, 1.5f, -2, 40, -INFINITY, -INFINITY, NAN, INFINITY};
      for (size_t j = 0; j + 4 <= buffers[i].bytes; j += 4) std::memcpy(&buffers[i].memory[j], &lses[buffers[i].memory[j] % 8], 4);
    }
  }
  const uint8_t in_place = draw.byte();
  if (in_place >= 192) {  // out = out_a (or out_b), lse = lse_a (or lse_b): the same tensors
    const int which = in_place % 2 ? 2 : 0;
    args.out = *slots[which].tensor;
    buffers[4] = Buffer{};
    slots[which].output = true;
    if (present(args.lse)) {
      args.lse = *slots[which + 1].tensor;
      buffers[5] = Buffer{};
      slots[which + 1].output = true;
    }
  }

  Model m;
  const View out_a = check_view(m, args.out_a, 3, Role::floating);
  for (const rpa_tensor* t : {&args.out_b, &args.out}) {
    const View view = check_view(m, *t, 3, Role::floating);
    if (view.ok && out_a.ok && !std::equal(t->shape, t->shape + 3, args.out_a.shape)) m.breaks();
    if (view.ok && t == &args.out && !distinct_elements(*t, view, 3)) m.breaks();
  }
  for (const rpa_tensor* t : {&args.lse_a, &args.lse_b, &args.lse}) {
    if (t == &args.lse && !present(args.lse)) continue;
    const View view = check_view(m, *t, 2, Role::floating);
    if (view.ok && int_of(&t->dtype) != 0) m.breaks();
    if (view.ok && out_a.ok && !std::equal(t->shape, t->shape + 2, args.out_a.shape)) m.breaks();
    if (view.ok && t == &args.lse && !distinct_elements(*t, view, 2)) m.breaks();
  }
  if (memory != 0) m.breaks();

  for (rpa_context* context : {contexts[0], contexts[1]}) {
    rpa_backend backend;
    rpa_context_get_backend(context, &backend);
    const std::string where = std::string("rpa_merge_states on ") + rpa_backend_string(backend);
    for (Buffer& b : buffers)
      if (b.memory) b.save();
    const rpa_status status = rpa_merge_states(context, &args);
    expect(where, status, m.broken, m.lines);
    expect_writes(where, status == RPA_STATUS_OK, buffers, slots);
    for (Buffer& b : buffers)
      if (b.memory) b.restore();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static rpa_context* const contexts[] = {context_of(RPA_BACKEND_REFERENCE), context_of(RPA_BACKEND_SIMD)};
  FuzzedDataProvider in(data, size);
  Drawer draw(in);

  const int64_t T = draw.size(6), KVH = draw.size(3), QH = saturated(KVH, 1 + draw.byte() % 3), D = draw.size(9);
  const int64_t P = draw.size(6), page_size = draw.size(5), S = draw.size(4), W = draw.size(4);

  rpa_attention_args args;
  rpa_attention_args_init(&args);
  enum { kQueries, kKv, kK, kV, kLens, kTables, kStarts, kSinks, kOut, kLse, kKScale, kVScale, kBuffers };
  std::vector<Buffer> buffers(kBuffers);
  const std::vector<Slot> slots = {{&args.queries, 3, false},      {&args.kv_pages, 4, false},
                                   {&args.k_cache, 4, false},      {&args.v_cache, 4, false},
                                   {&args.context_lens, 1, false}, {&args.block_tables, 2, false},
                                   {&args.query_start_loc, 1, false}, {&args.softmax_aux, 2, false},
                                   {&args.out, 3, true},           {&args.lse, 2, true},
                                   {&args.k_scale, 1, false},      {&args.v_scale, 1, false}};
  const int64_t q_shape[] = {T, QH, D}, kv_shape[] = {P, page_size, saturated(KVH, 2), D}, cache_shape[] = {P, page_size, KVH, D};
  const int64_t lens_shape[] = {S}, tables_shape[] = {S, W}, starts_shape[] = {saturated(S, 1, 1)}, lse_shape[] = {T, QH};
  const int32_t float_dtype = draw.byte() % 3, kv_dtype = draw.byte() % 6;
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
  // Scales: mostly with a quantised cache, sometimes without one (refused then).
  const bool scales = draw.byte() < (quantised(kv_dtype) ? 200 : 24);
  if (scales) {
    const int64_t per_head[] = {KVH}, per_tensor[] = {1};
    for (rpa_tensor* s : {&args.k_scale, &args.v_scale}) {
      const uint8_t kind = draw.byte();
      if (kind < 40) continue;  // absent
      *s = draw.tensor(1, kind % 2 ? per_head : per_tensor, RPA_DTYPE_F32);
    }
  }

  const uint64_t seed = draw.word();
  for (int i = 0; i < kBuffers; ++i) {
    rpa_tensor& t = *slots[i].tensor;
    if (t.ndim == 0 && t.shape[0] == 0) continue;  // absent
    if (draw.byte() >= 252) continue;              // present, but its data is NULL
    const uint8_t shift = draw.byte() >= 248 ? 1 + draw.byte() % 3 : 0;
    attach(t, slots[i].ndim, buffers[i], shift, seed + i);
  }
  // Float data: finite values in [-2, 2] (quantised caches keep their random codes, NaN codes included).
  for (int i : {kQueries, kKv, kK, kV, kOut})
    if (buffers[i].memory && int_of(&slots[i].tensor->dtype) == 0) fill_floats(buffers[i]);
  for (int i : {kKScale, kVScale})
    if (buffers[i].memory) fill_floats(buffers[i], true, draw.scale());
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
  // Device metadata needs device memory: host metadata (the default) only, on a CPU backend. The bounds
  // are read for device metadata only.
  const uint8_t metadata_byte = draw.byte();
  const int32_t metadata_memory = metadata_byte < 244 ? 0 : metadata_byte < 250 ? 1 : metadata_byte % 2 ? 2 : -1;
  std::memcpy(&args.metadata_memory, &metadata_memory, sizeof metadata_memory);
  if (draw.byte() >= 224) args.max_query_len = draw.int32(), args.max_context_len = draw.int32();
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
                                   {kOut, kSinks}, {kLse, kKScale}, {kOut, kV}, {kLse, kStarts}};
    const int* pair = pairs[alias % 8];
    Buffer& target = buffers[pair[1]];
    rpa_tensor& output = *slots[pair[0]].tensor;
    if (target.memory && output.data && target.exact) {
      output.data = target.memory.get() + (draw.byte() * 4) % (target.bytes & ~size_t{3} ? target.bytes & ~size_t{3} : 4);
      aliased[pair[0]] = true;  // its own buffer no longer holds it; the overlap rule refuses the call
    }
  }
  // The plan may be made before the float data exists. (Not with an output pointing into the metadata:
  // that overlap is a plan's rule, and a run may then write where the plan's metadata came from.)
  rpa_attention_args plan_args = args;
  if (draw.byte() >= 128 && !aliased[kOut] && !aliased[kLse])
    for (rpa_tensor* t : {&plan_args.queries, &plan_args.kv_pages, &plan_args.k_cache, &plan_args.v_cache,
                          &plan_args.softmax_aux, &plan_args.out, &plan_args.lse})
      if (t->ndim != 0) t->data = nullptr;
  // A run whose layout differs from the plan's is refused.
  rpa_attention_args run_args = args;
  const uint8_t change = draw.byte();
  const bool changed = change >= 240;
  if (changed) {
    if (change % 3 == 0) run_args.lse = present(args.lse) ? rpa_tensor{} : args.out;
    if (change % 3 == 1) run_args.out.dtype = static_cast<rpa_dtype>((int_of(&args.out.dtype) + 1) % 3);
    if (change % 3 == 2) run_args.queries.strides[0] = args.queries.strides[0] + 1;
  }

  bool backed = true;
  for (int i = 0; i < kBuffers; ++i) backed = backed && (!buffers[i].memory || buffers[i].exact || aliased[i]);
  const Prediction call = predict(&args, Phase::call, backed);
  const Prediction plan = predict(&plan_args, Phase::plan, backed);
  const Prediction run = predict(&run_args, Phase::run, backed);
  // A view whose buffer does not back it must never be read: skip calls that would read one.
  if (call.reads_unbacked || plan.reads_unbacked || run.reads_unbacked) return 0;
  // Valid calls of long contexts (a page_size of 65536 over a zero slot stride) are right but slow.
  if (call.work > 4e6 || plan.work > 4e6) return 0;

  for (rpa_context* context : contexts) {
    rpa_backend backend;
    rpa_context_get_backend(context, &backend);
    const std::string name = rpa_backend_string(backend);
    for (Buffer& b : buffers)
      if (b.memory) b.save();
    const rpa_status status = rpa_attention(context, &args);
    expect("rpa_attention on " + name, status, call.broken, call.lines);
    expect_writes("rpa_attention on " + name, status == RPA_STATUS_OK, buffers, slots);

    // The same through a plan: outputs bitwise equal to rpa_attention's.
    std::vector<std::vector<uint8_t>> answer;
    for (Buffer& b : buffers) {
      answer.emplace_back(b.memory.get(), b.memory.get() + b.bytes);
      if (b.memory) b.restore();
    }
    rpa_plan* handle = nullptr;
    const rpa_status planned = rpa_plan_create(context, &plan_args, &handle);
    expect("rpa_plan_create on " + name, planned, plan.broken, plan.lines);
    expect_writes("rpa_plan_create on " + name, false, buffers, slots);
    if (planned != RPA_STATUS_OK) continue;
    std::set<rpa_status> run_broken = run.broken;
    if (changed) run_broken.insert(RPA_STATUS_INVALID_ARGUMENT);
    const rpa_status ran = rpa_plan_run(handle, &run_args);
    rpa_plan_destroy(handle);
    expect("rpa_plan_run on " + name, ran, run_broken, run.lines);
    expect_writes("rpa_plan_run on " + name, ran == RPA_STATUS_OK, buffers, slots);
    if (ran == RPA_STATUS_OK && status == RPA_STATUS_OK)
      for (int i : {kOut, kLse})
        if (buffers[i].memory && std::memcmp(buffers[i].memory.get(), answer[i].data(), buffers[i].bytes) != 0)
          fail("rpa_plan_run on " + name + ": " + (i == kOut ? "out" : "lse") + " differs from rpa_attention's");
    for (Buffer& b : buffers)
      if (b.memory) b.restore();
  }

  if (draw.byte() >= 64) fuzz_write_kv(draw, contexts, args, buffers, slots);
  if (draw.byte() >= 64) fuzz_merge(draw, contexts);
  return 0;
}
