#include "core/validate.h"

#include <algorithm>
#include <array>
#include <cfloat>
#include <cmath>
#include <sstream>
#include <string>
#include <unordered_set>
#include <vector>

#include "core/dtype.h"
#include "core/enums.h"
#include "core/error.h"

namespace rpa {
namespace {

template <typename... Parts>
[[noreturn]] void reject(rpa_status status, const Parts&... parts) {
  std::ostringstream message;
  (message << ... << parts);
  fail(status, message.str());
}

template <typename... Parts>
[[noreturn]] void reject(const Parts&... parts) {
  reject(RPA_STATUS_INVALID_ARGUMENT, parts...);
}

// A memory-kind argument, read as its integer (a C caller may store any value in the enum).
rpa_memory_kind memory_kind(const char* name, const rpa_memory_kind& given) {
  const int32_t value = enum_value(given);
  if (value != RPA_MEMORY_HOST && value != RPA_MEMORY_DEVICE)
    reject("argument '", name, "': ", value, " is not an rpa_memory_kind");
  return static_cast<rpa_memory_kind>(value);
}

bool is_float_dtype(int32_t dtype) {
  return dtype == RPA_DTYPE_F32 || dtype == RPA_DTYPE_F16 || dtype == RPA_DTYPE_BF16;
}


// A checked tensor: its shape, resolved strides (all-zero strides mean contiguous), validated dtype and
// the bytes [begin, end) its view spans.
struct Tensor {
  const char* name;
  const rpa_tensor* raw;
  rpa_dtype dtype;
  std::array<int64_t, RPA_MAX_DIMS> strides{};
  uintptr_t begin = 0, end = 0;

  int64_t dim(int i) const { return raw->shape[i]; }
  int64_t stride(int i) const { return strides[i]; }
};

enum class Kind { metadata, floating, f32, kv };

// A tensor is present when it has data or dimensions (a plan may be made before the data exists).
bool present(const rpa_tensor& t) { return t.data != nullptr || t.ndim != 0; }

// Without data (`need_data` false, at plan time) the layout is checked and the view spans no bytes.
Tensor check_tensor(const char* name, const rpa_tensor& t, int ndim, const char* layout, Kind kind,
                    bool need_data = true) {
  if (need_data && !t.data) reject("argument '", name, "': data is NULL");
  if (t.ndim != ndim) reject("argument '", name, "': ndim is ", t.ndim, ", expected ", ndim, " (", layout, ")");
  const int32_t dtype = enum_value(t.dtype);
  // Compared as integers: a value outside the enumerators may not be cast to rpa_dtype.
  const bool quantised = dtype == RPA_DTYPE_FP8_E4M3 || dtype == RPA_DTYPE_FP8_E5M2 || dtype == RPA_DTYPE_INT8;
  if (kind == Kind::metadata && dtype != RPA_DTYPE_I32)
    reject("argument '", name, "': dtype is ", dtype_name(dtype), ", expected int32");
  if (kind == Kind::kv && !is_float_dtype(dtype) && !quantised)
    reject("argument '", name, "': dtype is ", dtype_name(dtype), ", expected f32, f16, bf16, fp8_e4m3, fp8_e5m2 or int8");
  if (kind == Kind::f32 && dtype != RPA_DTYPE_F32)
    reject("argument '", name, "': dtype is ", dtype_name(dtype), ", expected f32");
  if (kind == Kind::floating && !is_float_dtype(dtype))
    reject("argument '", name, "': dtype is ", dtype_name(dtype), ", expected f32, f16 or bf16",
           quantised ? " (quantised dtypes are for the KV cache only)" : "");
  Tensor result{name, &t, static_cast<rpa_dtype>(dtype)};
  const int64_t size = dtype_size(result.dtype);
  // Elements are read and written as their type: the view must start on an element boundary.
  if (reinterpret_cast<uintptr_t>(t.data) % static_cast<uintptr_t>(size) != 0)
    reject("argument '", name, "': data pointer ", t.data, " is not aligned to its ", size, "-byte elements");
  bool all_zero = true;
  for (int i = 0; i < ndim; ++i) {
    if (t.shape[i] <= 0) reject("argument '", name, "': shape[", i, "] is ", t.shape[i], "; sizes must be positive");
    // Larger sizes serve no real call (metadata entries are int32) and the backends count in int32.
    if (t.shape[i] > INT32_MAX) reject("argument '", name, "': shape[", i, "] is ", t.shape[i], ", more than 2^31 - 1");
    all_zero = all_zero && t.strides[i] == 0;
  }
  int64_t contiguous = 1;
  for (int i = ndim - 1; i >= 0; --i) {
    result.strides[i] = all_zero ? contiguous : t.strides[i];
    if (__builtin_mul_overflow(contiguous, t.shape[i], &contiguous))
      reject("argument '", name, "': element count overflows at shape[", i, "]");
    if (result.strides[i] < 0) reject("argument '", name, "': strides[", i, "] is ", t.strides[i], ", must be >= 0");
  }
  int64_t count_bytes;
  if (__builtin_mul_overflow(contiguous, size, &count_bytes))
    reject("argument '", name, "': element count ", contiguous, " times ", size, " bytes overflows");
  if (result.strides[ndim - 1] != 1)
    reject("argument '", name, "': strides[", ndim - 1, "] is ", result.strides[ndim - 1],
           "; the last dimension must be contiguous (stride 1)");
  // The furthest byte the view reaches must be addressable.
  int64_t last = 0;
  for (int i = 0; i < ndim; ++i) {
    int64_t span;
    if (__builtin_mul_overflow(t.shape[i] - 1, result.strides[i], &span) || __builtin_add_overflow(last, span, &last))
      reject("argument '", name, "': the byte extent overflows at dimension ", i);
  }
  int64_t bytes;
  if (__builtin_add_overflow(last, 1, &bytes) || __builtin_mul_overflow(bytes, size, &bytes))
    reject("argument '", name, "': the byte extent overflows");
  if (!t.data) return result;
  result.begin = reinterpret_cast<uintptr_t>(t.data);
  if (__builtin_add_overflow(result.begin, static_cast<uintptr_t>(bytes), &result.end))
    reject("argument '", name, "': the view's ", bytes, " bytes run past the end of the address space");
  return result;
}

// An output view must not reach one element twice (a zero or too small stride), else rows would be
// written over each other, concurrently on the parallel backends. Sufficient test: ordered by stride,
// each dimension's stride exceeds the reach of the faster-varying ones.
void expect_distinct_elements(const Tensor& t, int ndim) {
  std::array<int, RPA_MAX_DIMS> order{};
  int used = 0;
  for (int i = 0; i < ndim; ++i)
    if (t.dim(i) > 1) order[used++] = i;
  std::stable_sort(order.begin(), order.begin() + used, [&](int a, int b) { return t.stride(a) < t.stride(b); });
  int64_t reach = 1;  // elements spanned by the dimensions checked so far (no overflow: check_tensor bounded it)
  for (int k = 0; k < used; ++k) {
    const int i = order[k];
    if (t.stride(i) < reach)
      reject("argument '", t.name, "': strides[", i, "] = ", t.stride(i), " makes the view reach some elements more ",
             "than once (the faster-varying dimensions span ", reach, "); an output element would be written twice");
    reach = t.stride(i) * (t.dim(i) - 1) + reach;
  }
}

// Outputs share no byte with an input or another output: an overlap would read values the call has
// already overwritten (or corrupt the cache). In-place out = queries is refused too, because the
// backends write rows while other rows still read their queries.
void expect_no_overlap(const Tensor& output, const Tensor& other,
                       const char* rule = "out and lse may not share memory with any input or with each other") {
  if (output.begin < other.end && other.begin < output.end)
    reject("argument '", output.name, "': its bytes overlap those of '", other.name, "'; ", rule);
}

void expect_dim(const Tensor& t, int i, int64_t expected, const char* meaning) {
  if (t.dim(i) != expected)
    reject("argument '", t.name, "': shape[", i, "] is ", t.dim(i), ", expected ", expected, " (", meaning, ")");
}

// A plan's KV data may be NULL: the offset is added as an integer (pointer arithmetic on NULL is undefined),
// so the view keeps the alignment a plan reads from it.
rpa_kv_view kv_view(const Tensor& t, int64_t head_stride, int64_t offset) {
  const uintptr_t elements = reinterpret_cast<uintptr_t>(t.raw->data) + static_cast<uintptr_t>(offset * dtype_size(t.dtype));
  return rpa_kv_view{reinterpret_cast<const void*>(elements), t.stride(0), t.stride(1), head_stride};
}

// A checked KV cache, combined or separate, as two views.
struct Cache {
  const char* name;  // the argument the head_dim is read from
  int64_t num_kv_heads, num_pages, page_size, head_dim;
  rpa_dtype dtype;
  rpa_kv_view k, v;
  std::vector<Tensor> tensors;  // kv_pages, or k_cache and v_cache (for the overlap checks)
};

// Given means present, as for a plan: a described view without data is given too (and then refused).
Cache check_cache(const rpa_tensor& kv_pages, const rpa_tensor& k_cache, const rpa_tensor& v_cache) {
  if (present(kv_pages)) {
    if (present(k_cache) || present(v_cache))
      reject("argument 'k_cache': give either kv_pages or k_cache and v_cache, not both");
    const Tensor kv = check_tensor("kv_pages", kv_pages, 4, "[P, page_size, 2*KVH, D]", Kind::kv);
    if (kv.dim(2) % 2 != 0)
      reject("argument 'kv_pages': shape[2] is ", kv.dim(2), ", expected an even 2*KVH (K and V interleaved)");
    return Cache{"kv_pages", kv.dim(2) / 2, kv.dim(0), kv.dim(1), kv.dim(3), kv.dtype,
                 kv_view(kv, 2 * kv.stride(2), 0), kv_view(kv, 2 * kv.stride(2), kv.stride(2)), {kv}};
  }
  if (!present(k_cache) && !present(v_cache))
    reject("argument 'kv_pages': data is NULL and no separate k_cache/v_cache is given");
  const Tensor k = check_tensor("k_cache", k_cache, 4, "[P, page_size, KVH, D]", Kind::kv);
  const Tensor v = check_tensor("v_cache", v_cache, 4, "[P, page_size, KVH, D]", Kind::kv);
  for (int i = 0; i < 4; ++i)
    if (v.dim(i) != k.dim(i)) reject("argument 'v_cache': shape[", i, "] is ", v.dim(i), ", but k_cache has ", k.dim(i));
  if (v.dtype != k.dtype)
    reject("argument 'v_cache': dtype is ", dtype_name(v.dtype), ", but k_cache is ", dtype_name(k.dtype));
  return Cache{"k_cache", k.dim(2), k.dim(0), k.dim(1), k.dim(3), k.dtype,
               kv_view(k, k.stride(2), 0), kv_view(v, v.stride(2), 0), {k, v}};
}

// One scale per tensor or per kv head, host f32; absent means 1. `checked` receives the view (for the
// overlap rules; an absent scale spans no bytes).
struct Scale {
  const float* data;
  int64_t stride;
};

Scale check_scale(const char* name, const rpa_tensor& t, const Cache& cache, Tensor& checked) {
  static const float kOne = 1.0f;
  if (!present(t)) return Scale{&kOne, 0};
  if (!is_quantised_dtype(cache.dtype))
    reject("argument '", name, "': given, but the KV cache's dtype ", dtype_name(cache.dtype),
           " is not quantised (scales are for fp8_e4m3, fp8_e5m2 and int8)");
  // Every tensor's rules (data, alignment, strides, extent), then the scales' own.
  checked = check_tensor(name, t, 1, "[1] or [KVH]", Kind::f32);
  if (t.shape[0] != 1 && t.shape[0] != cache.num_kv_heads)
    reject("argument '", name, "': shape[0] is ", t.shape[0], ", expected 1 (per tensor) or KVH = ", cache.num_kv_heads,
           " (per kv head)");
  const int64_t stride = t.shape[0] == 1 ? 0 : checked.stride(0);
  const float* scales = static_cast<const float*>(t.data);
  for (int64_t h = 0; h < t.shape[0]; ++h) {
    const float scale = scales[h * stride];
    if (!std::isfinite(scale) || !(scale > 0.0f))
      reject("argument '", name, "': element [", h, "] is ", scale, "; scales must be finite and > 0");
  }
  return Scale{scales, stride};
}

using Layouts = std::array<TensorLayout, kTensorSlots>;

void record(Layouts& layouts, TensorSlot slot, const Tensor& t) {
  TensorLayout& layout = layouts[slot];
  layout.present = true;
  layout.dtype = t.dtype;
  layout.ndim = t.raw->ndim;
  for (int i = 0; i < layout.ndim; ++i) layout.shape[i] = t.dim(i), layout.strides[i] = t.stride(i);
}

// The float tensors as checked, for the overlap rules (absent ones span no bytes).
struct FloatTensors {
  Tensor queries{}, kv{}, k{}, v{}, out{}, lse{}, sinks{};
};

// The float tensors and the memory kind: fills their fields of `p` and their layouts. `need_data` is
// false at plan time.
FloatTensors check_float_tensors(const rpa_attention_args& args, bool need_data, rpa_problem& p, Layouts& layouts) {
  FloatTensors t;
  const Tensor& queries = t.queries = check_tensor("queries", args.queries, 3, "[T, QH, D]", Kind::floating, need_data);
  record(layouts, kQueries, queries);
  p.num_tokens = queries.dim(0);
  p.num_q_heads = queries.dim(1);
  p.head_dim = queries.dim(2);
  // The backends index (token, q head) rows with 32-bit integers.
  if (p.num_tokens * p.num_q_heads > INT32_MAX)  // no overflow: the element count T * QH * D was checked
    reject("argument 'queries': T * QH = ", p.num_tokens, " * ", p.num_q_heads,
           " (token, q head) rows exceed 2^31 - 1");
  p.queries = args.queries.data;
  p.query_dtype = queries.dtype;
  p.query_token_stride = queries.stride(0);
  p.query_head_stride = queries.stride(1);

  if (present(args.kv_pages)) {
    if (present(args.k_cache) || present(args.v_cache))
      reject("argument 'k_cache': give either kv_pages or k_cache and v_cache, not both");
    const Tensor& kv = t.kv =
        check_tensor("kv_pages", args.kv_pages, 4, "[P, page_size, 2*KVH, D]", Kind::kv, need_data);
    record(layouts, kKvPages, kv);
    if (kv.dim(2) % 2 != 0)
      reject("argument 'kv_pages': shape[2] is ", kv.dim(2), ", expected an even 2*KVH (K and V interleaved)");
    p.num_kv_heads = kv.dim(2) / 2;
    p.num_pages = kv.dim(0);
    p.page_size = kv.dim(1);
    p.kv_dtype = kv.dtype;
    p.k = kv_view(kv, 2 * kv.stride(2), 0);
    p.v = kv_view(kv, 2 * kv.stride(2), kv.stride(2));
    if (kv.dim(3) != p.head_dim)
      reject("argument 'kv_pages': shape[3] is ", kv.dim(3), ", but queries have head_dim ", p.head_dim);
  } else {
    if (!present(args.k_cache) && !present(args.v_cache))
      reject("argument 'kv_pages': data is NULL and no separate k_cache/v_cache is given");
    const Tensor& k = t.k = check_tensor("k_cache", args.k_cache, 4, "[P, page_size, KVH, D]", Kind::kv, need_data);
    const Tensor& v = t.v = check_tensor("v_cache", args.v_cache, 4, "[P, page_size, KVH, D]", Kind::kv, need_data);
    record(layouts, kKCache, k);
    record(layouts, kVCache, v);
    for (int i = 0; i < 4; ++i)
      if (v.dim(i) != k.dim(i))
        reject("argument 'v_cache': shape[", i, "] is ", v.dim(i), ", but k_cache has ", k.dim(i));
    if (v.dtype != k.dtype)
      reject("argument 'v_cache': dtype is ", dtype_name(v.dtype), ", but k_cache is ", dtype_name(k.dtype));
    p.num_kv_heads = k.dim(2);
    p.num_pages = k.dim(0);
    p.page_size = k.dim(1);
    p.kv_dtype = k.dtype;
    p.k = kv_view(k, k.stride(2), 0);
    p.v = kv_view(v, v.stride(2), 0);
    if (k.dim(3) != p.head_dim)
      reject("argument 'k_cache': shape[3] is ", k.dim(3), ", but queries have head_dim ", p.head_dim);
  }
  if (p.num_q_heads % p.num_kv_heads != 0)
    reject("argument 'queries': shape[1] (QH = ", p.num_q_heads, ") is not a multiple of the KV heads (KVH = ",
           p.num_kv_heads, ")");

  const Tensor& out = t.out = check_tensor("out", args.out, 3, "[T, QH, D]", Kind::floating, need_data);
  record(layouts, kOut, out);
  expect_dim(out, 0, p.num_tokens, "T of queries");
  expect_dim(out, 1, p.num_q_heads, "QH of queries");
  expect_dim(out, 2, p.head_dim, "D of queries");
  expect_distinct_elements(out, 3);
  p.out = args.out.data;
  p.out_dtype = out.dtype;
  p.out_token_stride = out.stride(0);
  p.out_head_stride = out.stride(1);

  if (present(args.lse)) {
    const Tensor& lse = t.lse = check_tensor("lse", args.lse, 2, "[T, QH]", Kind::f32, need_data);
    record(layouts, kLse, lse);
    expect_dim(lse, 0, p.num_tokens, "T of queries");
    expect_dim(lse, 1, p.num_q_heads, "QH of queries");
    expect_distinct_elements(lse, 2);
    p.lse = static_cast<float*>(args.lse.data);
    p.lse_token_stride = lse.stride(0);
    p.lse_head_stride = lse.stride(1);
  }

  p.memory = memory_kind("memory", args.memory);

  if (present(args.softmax_aux)) {
    const Tensor& sinks = t.sinks = check_tensor("softmax_aux", args.softmax_aux, 2, "[H_s, n]", Kind::floating, need_data);
    record(layouts, kSinks, sinks);
    if (sinks.dim(0) != 1 && sinks.dim(0) != p.num_kv_heads && sinks.dim(0) != p.num_q_heads)
      reject("argument 'softmax_aux': shape[0] is ", sinks.dim(0), ", expected 1, KVH (", p.num_kv_heads,
             ") or QH (", p.num_q_heads, ")");
    p.sinks = args.softmax_aux.data;
    p.sink_dtype = sinks.dtype;
    p.sink_heads = sinks.dim(0);
    p.sinks_per_head = sinks.dim(1);
    p.sink_head_stride = sinks.stride(0);
    p.sink_stride = sinks.stride(1);
  }
  return t;
}

const char* const kSlotNames[kTensorSlots] = {"queries", "kv_pages", "k_cache", "v_cache", "out", "lse", "softmax_aux"};

void expect_same_layout(TensorSlot slot, const TensorLayout& planned, const TensorLayout& given) {
  const char* name = kSlotNames[slot];
  if (planned.present != given.present)
    reject("argument '", name, "': ", given.present ? "given" : "absent", " at run time but ",
           planned.present ? "given" : "absent", " when the plan was made");
  if (!planned.present) return;
  if (given.dtype != planned.dtype)
    reject("argument '", name, "': dtype is ", dtype_name(given.dtype), ", but the plan was made for ",
           dtype_name(planned.dtype));
  for (int i = 0; i < planned.ndim; ++i) {
    if (given.shape[i] != planned.shape[i])
      reject("argument '", name, "': shape[", i, "] is ", given.shape[i], ", but the plan was made for ",
             planned.shape[i]);
    if (given.strides[i] != planned.strides[i])
      reject("argument '", name, "': strides[", i, "] is ", given.strides[i], ", but the plan was made for ",
             planned.strides[i]);
  }
}

// The metadata rules of the contract for sequences 0..num_seqs-1 (host memory); p holds the sizes.
void check_metadata_values(const rpa_problem& p, const int32_t* lens, const int32_t* tables, int64_t table_stride,
                           const int32_t* qsl) {
  if (qsl[0] < 0) reject("argument 'query_start_loc': element [0] is ", qsl[0], ", must be >= 0");
  for (int32_t s = 0; s < p.num_seqs; ++s)
    if (qsl[s + 1] < qsl[s])
      reject("argument 'query_start_loc': element [", s + 1, "] = ", qsl[s + 1], " is less than element [", s,
             "] = ", qsl[s]);
  if (qsl[p.num_seqs] > p.num_tokens)
    reject("argument 'query_start_loc': element [", p.num_seqs, "] = ", qsl[p.num_seqs],
           " exceeds the number of query tokens T = ", p.num_tokens);

  const int64_t max_context = p.pages_per_seq * p.page_size;  // both below 2^31: no overflow
  for (int32_t s = 0; s < p.num_seqs; ++s) {
    const int64_t context_len = lens[s];
    const int64_t q_len = qsl[s + 1] - qsl[s];
    if (context_len < 0) reject("argument 'context_lens': element [", s, "] is ", context_len, ", must be >= 0");
    if (context_len > max_context)
      reject("argument 'context_lens': element [", s, "] is ", context_len, ", more than W * page_size = ",
             max_context);
    if (q_len > context_len)
      reject("argument 'context_lens': element [", s, "] is ", context_len, ", less than the sequence's ", q_len,
             " query tokens");
    if (q_len == 0) continue;  // reads no key
    // The keys sequence s can see span [first_key, context_len): check exactly their pages.
    const int64_t first_pos = context_len - q_len;
    const int64_t first_key = p.sliding_window > 0 ? std::max<int64_t>(0, first_pos - p.sliding_window + 1) : 0;
    for (int64_t page = first_key / p.page_size; page <= (context_len - 1) / p.page_size; ++page) {
      const int32_t entry = tables[s * table_stride + page];
      if (entry < 0 || entry >= p.num_pages)
        reject("argument 'block_tables': element [", s, ", ", page, "] is ", entry, ", outside [0, P = ", p.num_pages,
               ")");
    }
  }
}

}  // namespace

void check_device_metadata(const rpa_problem& p, const int32_t* lens, const int32_t* tables, int64_t table_stride,
                           const int32_t* qsl) {
  check_metadata_values(p, lens, tables, table_stride, qsl);
  for (int32_t s = 0; s < p.num_seqs; ++s) {
    if (qsl[s + 1] - qsl[s] > p.max_query_len)
      reject("argument 'query_start_loc': sequence [", s, "] has ", qsl[s + 1] - qsl[s],
             " query tokens, more than max_query_len = ", p.max_query_len);
    if (lens[s] > p.max_context_len)
      reject("argument 'context_lens': element [", s, "] is ", lens[s], ", more than max_context_len = ",
             p.max_context_len);
  }
}

std::unique_ptr<PlannedCall> validate_plan_args(const rpa_attention_args& args) {
  auto plan = std::make_unique<PlannedCall>();
  rpa_problem& p = plan->problem_;
  p.struct_size = sizeof p;
  const FloatTensors tensors = check_float_tensors(args, false, p, plan->layouts_);

  if (args.sliding_window < 0)
    reject("argument 'sliding_window': ", args.sliding_window, " must be 0 (none) or > 0");
  p.sliding_window = args.sliding_window;

  // Metadata (host memory).
  const Tensor context_lens = check_tensor("context_lens", args.context_lens, 1, "[S]", Kind::metadata);
  const int64_t max_seqs = context_lens.dim(0);
  const Tensor block_tables = check_tensor("block_tables", args.block_tables, 2, "[S, W]", Kind::metadata);
  expect_dim(block_tables, 0, max_seqs, "S of context_lens");
  const Tensor query_start_loc = check_tensor("query_start_loc", args.query_start_loc, 1, "[S+1]", Kind::metadata);
  expect_dim(query_start_loc, 0, max_seqs + 1, "S+1");
  p.pages_per_seq = block_tables.dim(1);
  plan->metadata_seqs_ = max_seqs;
  const auto* lens = static_cast<const int32_t*>(args.context_lens.data);
  const auto* tables = static_cast<const int32_t*>(args.block_tables.data);
  const int64_t table_stride = block_tables.stride(0);
  const auto* qsl = static_cast<const int32_t*>(args.query_start_loc.data);

  if (args.num_seqs < 0 || args.num_seqs > max_seqs)
    reject("argument 'num_seqs': ", args.num_seqs, " is outside [0, S = ", max_seqs, "]");
  p.num_seqs = args.num_seqs;

  p.metadata_memory = memory_kind("metadata_memory", args.metadata_memory);
  if (p.metadata_memory == RPA_MEMORY_DEVICE) {
    if (p.memory != RPA_MEMORY_DEVICE)
      reject("argument 'metadata_memory': device metadata needs the tensors in device memory too (memory)");
    const auto bound = [](const char* name, int32_t given, int64_t limit, const char* limit_name) {
      if (given < 0 || given > limit)
        reject("argument '", name, "': ", given, " is outside [0, ", limit_name, " = ", limit, "] (0: the limit)");
      // A limit past int32 (W * page_size can be) bounds nothing more than int32 does: context_lens are int32.
      return given == 0 ? static_cast<int32_t>(std::min<int64_t>(limit, INT32_MAX)) : given;
    };
    p.max_query_len = bound("max_query_len", args.max_query_len, p.num_tokens, "T");
    p.max_context_len = bound("max_context_len", args.max_context_len, p.pages_per_seq * p.page_size, "W * page_size");
    // The caller's arrays, read on the device at each run.
    p.context_lens = lens;
    p.query_start_loc = qsl;
    p.block_tables = tables;
    p.block_table_stride = table_stride;
    return plan;
  }
  check_metadata_values(p, lens, tables, table_stride, qsl);
  for (int32_t s = 0; s < p.num_seqs; ++s) {
    p.max_query_len = std::max(p.max_query_len, qsl[s + 1] - qsl[s]);
    p.max_context_len = std::max(p.max_context_len, lens[s]);
  }

  // Outputs given already must not overlap the host metadata (the other overlaps are a run's rules).
  if (p.memory == RPA_MEMORY_HOST)
    for (const Tensor* output : std::array<const Tensor*, 2>{&tensors.out, &tensors.lse})
      for (const Tensor* input : std::array<const Tensor*, 3>{&context_lens, &block_tables, &query_start_loc})
        expect_no_overlap(*output, *input);

  // The plan keeps its own copy of what it read, so the caller may reuse its arrays at once.
  const size_t seqs = static_cast<size_t>(p.num_seqs), width = static_cast<size_t>(p.pages_per_seq);
  plan->context_lens_.assign(lens, lens + seqs);
  plan->query_start_loc_.assign(qsl, qsl + seqs + 1);
  plan->block_tables_.resize(seqs * width);
  for (size_t s = 0; s < seqs; ++s)
    std::copy_n(tables + s * table_stride, width, plan->block_tables_.data() + s * width);
  p.context_lens = plan->context_lens_.data();
  p.query_start_loc = plan->query_start_loc_.data();
  p.block_tables = plan->block_tables_.data();
  p.block_table_stride = p.pages_per_seq;
  return plan;
}

rpa_problem validate_run_args(const PlannedCall& plan, const rpa_attention_args& args) {
  const rpa_problem& planned = plan.problem();
  rpa_problem p = planned;
  Layouts layouts{};
  const FloatTensors t = check_float_tensors(args, true, p, layouts);
  for (int slot = 0; slot < kTensorSlots; ++slot)
    expect_same_layout(static_cast<TensorSlot>(slot), plan.layout(static_cast<TensorSlot>(slot)), layouts[slot]);
  if (p.memory != planned.memory)
    reject("argument 'memory': ", p.memory == RPA_MEMORY_HOST ? "host" : "device", " at run time but ",
           planned.memory == RPA_MEMORY_HOST ? "host" : "device", " when the plan was made");
  p.stream = args.stream;
  p.synchronize = args.synchronize;

  // Device metadata: the run may read other arrays of the plan's shapes (all three; none: the plan's),
  // such as a framework's buffer that moves from call to call, without a copy into the plan's.
  if (p.metadata_memory == RPA_MEMORY_DEVICE &&
      (args.context_lens.data || args.block_tables.data || args.query_start_loc.data)) {
    const Tensor context_lens = check_tensor("context_lens", args.context_lens, 1, "[S]", Kind::metadata);
    expect_dim(context_lens, 0, plan.metadata_seqs(), "S of the plan");
    const Tensor block_tables = check_tensor("block_tables", args.block_tables, 2, "[S, W]", Kind::metadata);
    expect_dim(block_tables, 0, plan.metadata_seqs(), "S of the plan");
    expect_dim(block_tables, 1, p.pages_per_seq, "W of the plan");
    const Tensor query_start_loc = check_tensor("query_start_loc", args.query_start_loc, 1, "[S+1]", Kind::metadata);
    expect_dim(query_start_loc, 0, plan.metadata_seqs() + 1, "S+1 of the plan");
    p.context_lens = static_cast<const int32_t*>(args.context_lens.data);
    p.query_start_loc = static_cast<const int32_t*>(args.query_start_loc.data);
    p.block_tables = static_cast<const int32_t*>(args.block_tables.data);
    p.block_table_stride = block_tables.stride(0);
  }

  // Scalars. The kernels compute in f32, so a scale or cap must be a normal f32 magnitude: a larger one
  // would become inf there, a subnormal one lose its precision (or flush to 0).
  const auto normal_f32 = [](double x) { return std::fabs(x) >= FLT_MIN && std::fabs(x) <= FLT_MAX; };
  if (args.softmax_scale != 0 && !normal_f32(args.softmax_scale))
    reject("argument 'softmax_scale': ", args.softmax_scale, " must be 0 (default) or have a magnitude in [",
           FLT_MIN, ", ", FLT_MAX, "] (normal f32)");
  p.softmax_scale = args.softmax_scale != 0 ? args.softmax_scale : 1.0 / std::sqrt(static_cast<double>(p.head_dim));
  if (args.logits_soft_cap != 0 && !(args.logits_soft_cap > 0 && normal_f32(args.logits_soft_cap)))
    reject("argument 'logits_soft_cap': ", args.logits_soft_cap, " must be 0 (none) or in [", FLT_MIN, ", ", FLT_MAX,
           "] (a normal f32 > 0)");
  p.logits_soft_cap = args.logits_soft_cap;

  // A quantised cache's scales (host memory, run-time values).
  const Cache cache{"", p.num_kv_heads, p.num_pages, p.page_size, p.head_dim, p.kv_dtype, p.k, p.v, {}};
  Tensor k_scale_view{}, v_scale_view{};
  const Scale k_scale = check_scale("k_scale", args.k_scale, cache, k_scale_view);
  const Scale v_scale = check_scale("v_scale", args.v_scale, cache, v_scale_view);
  p.k_scale = k_scale.data, p.k_scale_stride = k_scale.stride;
  p.v_scale = v_scale.data, p.v_scale_stride = v_scale.stride;

  if (p.sinks && p.memory == RPA_MEMORY_HOST) {
    for (int64_t h = 0; h < p.sink_heads; ++h)
      for (int64_t n = 0; n < p.sinks_per_head; ++n) {
        const float sink = load_float(p.sinks, p.sink_dtype, h * p.sink_head_stride + n * p.sink_stride);
        if (std::isnan(sink) || sink == INFINITY)
          reject("argument 'softmax_aux': element [", h, ", ", n, "] is ", sink, "; sinks must be finite or -inf");
      }
  }

  // Outputs share no byte with an input or each other (absent tensors span none; the scales are host
  // memory, compared with host outputs only).
  for (const Tensor* output : std::array<const Tensor*, 2>{&t.out, &t.lse})
    for (const Tensor* input : std::array<const Tensor*, 5>{&t.queries, &t.sinks, &t.kv, &t.k, &t.v})
      expect_no_overlap(*output, *input);
  if (p.memory == RPA_MEMORY_HOST)
    for (const Tensor* output : std::array<const Tensor*, 2>{&t.out, &t.lse})
      for (const Tensor* input : std::array<const Tensor*, 2>{&k_scale_view, &v_scale_view})
        expect_no_overlap(*output, *input);
  expect_no_overlap(t.out, t.lse);
  return p;
}

rpa_write_problem validate_write_kv_args(const rpa_write_kv_args& args, std::vector<int32_t>& slots) {
  rpa_write_problem w{};
  w.struct_size = sizeof w;
  const Tensor keys = check_tensor("keys", args.keys, 3, "[N, KVH, D]", Kind::floating);
  const Tensor values = check_tensor("values", args.values, 3, "[N, KVH, D]", Kind::floating);
  for (int i = 0; i < 3; ++i)
    if (values.dim(i) != keys.dim(i)) reject("argument 'values': shape[", i, "] is ", values.dim(i), ", but keys have ", keys.dim(i));
  const Cache cache = check_cache(args.kv_pages, args.k_cache, args.v_cache);
  expect_dim(keys, 1, cache.num_kv_heads, "KVH of the cache");
  expect_dim(keys, 2, cache.head_dim, "D of the cache");
  w.num_tokens = keys.dim(0);
  w.num_kv_heads = cache.num_kv_heads;
  w.head_dim = cache.head_dim;
  w.page_size = cache.page_size;
  w.num_slots = cache.num_pages * cache.page_size;  // both from checked shapes of one tensor: no overflow
  w.keys = args.keys.data, w.key_dtype = keys.dtype;
  w.key_token_stride = keys.stride(0), w.key_head_stride = keys.stride(1);
  w.values = args.values.data, w.value_dtype = values.dtype;
  w.value_token_stride = values.stride(0), w.value_head_stride = values.stride(1);
  // The cache is the call's output: its views are written.
  w.k = rpa_kv_target{const_cast<void*>(cache.k.data), cache.k.page_stride, cache.k.slot_stride, cache.k.head_stride};
  w.v = rpa_kv_target{const_cast<void*>(cache.v.data), cache.v.page_stride, cache.v.slot_stride, cache.v.head_stride};
  w.kv_dtype = cache.dtype;
  Tensor k_scale_view{}, v_scale_view{};
  const Scale k_scale = check_scale("k_scale", args.k_scale, cache, k_scale_view);
  const Scale v_scale = check_scale("v_scale", args.v_scale, cache, v_scale_view);
  w.k_scale = k_scale.data, w.k_scale_stride = k_scale.stride;
  w.v_scale = v_scale.data, w.v_scale_stride = v_scale.stride;

  w.memory = memory_kind("memory", args.memory);
  w.stream = args.stream;
  w.synchronize = args.synchronize;

  const Tensor mapping = check_tensor("slot_mapping", args.slot_mapping, 1, "[N]", Kind::metadata);
  expect_dim(mapping, 0, w.num_tokens, "N of keys");
  // The cache is this call's output: a key or value read after a write into the same bytes would be wrong.
  // (Checked before the slots are read: they may be the bytes in question.)
  for (const Tensor& target : cache.tensors)
    for (const Tensor* input : std::initializer_list<const Tensor*>{&keys, &values, &mapping, &k_scale_view, &v_scale_view})
      expect_no_overlap(target, *input, "the cache may not share memory with keys, values, slot_mapping or the scales");
  const auto* given = static_cast<const int32_t*>(args.slot_mapping.data);
  slots.resize(static_cast<size_t>(w.num_tokens));
  for (int64_t i = 0; i < w.num_tokens; ++i) {
    const int32_t slot = given[i * mapping.stride(0)];
    if (slot != -1 && (slot < 0 || slot >= w.num_slots))
      reject("argument 'slot_mapping': element [", i, "] is ", slot, ", outside [0, P * page_size = ", w.num_slots,
             ") and not -1 (skip)");
    slots[static_cast<size_t>(i)] = slot;
  }
  // The later of two tokens mapped to one slot wins: drop the earlier ones, walking backwards.
  std::unordered_set<int32_t> taken;
  taken.reserve(slots.size());
  for (size_t i = slots.size(); i-- > 0;)
    if (slots[i] != -1 && !taken.insert(slots[i]).second) slots[i] = -1;
  w.slots = slots.data();
  return w;
}

}  // namespace rpa

namespace rpa {

rpa_merge_problem validate_merge_args(const rpa_merge_args& args) {
  rpa_merge_problem p{};
  p.struct_size = sizeof p;
  const Tensor out_a = check_tensor("out_a", args.out_a, 3, "[T, H, D]", Kind::floating);
  p.num_tokens = out_a.dim(0);
  p.num_heads = out_a.dim(1);
  p.head_dim = out_a.dim(2);
  const auto state = [&](const char* name, const rpa_tensor& raw, const void*& data, rpa_dtype& dtype,
                         int64_t& token_stride, int64_t& head_stride) {
    const Tensor t = check_tensor(name, raw, 3, "[T, H, D]", Kind::floating);
    expect_dim(t, 0, p.num_tokens, "T of out_a");
    expect_dim(t, 1, p.num_heads, "H of out_a");
    expect_dim(t, 2, p.head_dim, "D of out_a");
    data = raw.data, dtype = t.dtype, token_stride = t.stride(0), head_stride = t.stride(1);
    return t;
  };
  const auto lse = [&](const char* name, const rpa_tensor& raw, auto& data, int64_t& token_stride,
                       int64_t& head_stride) {
    const Tensor t = check_tensor(name, raw, 2, "[T, H]", Kind::f32);
    expect_dim(t, 0, p.num_tokens, "T of out_a");
    expect_dim(t, 1, p.num_heads, "H of out_a");
    data = static_cast<float*>(raw.data), token_stride = t.stride(0), head_stride = t.stride(1);
    return t;
  };
  state("out_a", args.out_a, p.out_a, p.out_a_dtype, p.out_a_token_stride, p.out_a_head_stride);
  const Tensor lse_a = lse("lse_a", args.lse_a, p.lse_a, p.lse_a_token_stride, p.lse_a_head_stride);
  const Tensor out_b = state("out_b", args.out_b, p.out_b, p.out_b_dtype, p.out_b_token_stride, p.out_b_head_stride);
  const Tensor lse_b = lse("lse_b", args.lse_b, p.lse_b, p.lse_b_token_stride, p.lse_b_head_stride);
  const void* out_data = nullptr;
  const Tensor out = state("out", args.out, out_data, p.out_dtype, p.out_token_stride, p.out_head_stride);
  p.out = const_cast<void*>(out_data);
  expect_distinct_elements(out, 3);
  Tensor lse_out{};  // absent: spans no bytes
  if (present(args.lse)) {
    lse_out = lse("lse", args.lse, p.lse, p.lse_token_stride, p.lse_head_stride);
    expect_distinct_elements(lse_out, 2);
  }
  // Each row reads its inputs before it writes, so an output may be one of its inputs exactly (in place);
  // any other shared byte would be read after another row, or another element, wrote it.
  const auto same_view = [](const Tensor& x, const Tensor& y) {
    return x.begin == y.begin && x.dtype == y.dtype && x.strides == y.strides;
  };
  const char* rule = "out and lse may be out_a/out_b and lse_a/lse_b exactly (in place), or share no memory with them";
  for (const Tensor* input : {&out_a, &out_b, &lse_a, &lse_b}) {
    if (!same_view(out, *input)) expect_no_overlap(out, *input, rule);
    if (!same_view(lse_out, *input)) expect_no_overlap(lse_out, *input, rule);
  }
  expect_no_overlap(out, lse_out, rule);
  p.memory = memory_kind("memory", args.memory);
  p.stream = args.stream;
  p.synchronize = args.synchronize;
  return p;
}

}  // namespace rpa
