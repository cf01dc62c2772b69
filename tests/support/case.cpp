#include "tests/support/case.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>

#include "core/dtype.h"

namespace rpa::testing {
namespace {

float round_to(rpa_dtype dtype, float x) {
  switch (dtype) {
    case RPA_DTYPE_F16: return f16_to_float(float_to_f16(x));
    case RPA_DTYPE_BF16: return bf16_to_float(float_to_bf16(x));
    case RPA_DTYPE_FP8_E4M3:
    case RPA_DTYPE_FP8_E5M2:
    case RPA_DTYPE_INT8: return code_to_float(dtype, float_to_code(dtype, x, 1.0f));
    default: return x;
  }
}

// Bytes holding `values` as `dtype`, with element i at index i (layout is the caller's).
std::vector<uint8_t> encode(const std::vector<float>& values, rpa_dtype dtype) {
  const int size = dtype_size(dtype);
  std::vector<uint8_t> bytes(values.size() * size);
  for (size_t i = 0; i < values.size(); ++i) store_kv(bytes.data(), dtype, static_cast<int64_t>(i), values[i], 1.0f);
  return bytes;
}

rpa_tensor tensor(void* data, rpa_dtype dtype, std::initializer_list<int64_t> shape,
                  std::initializer_list<int64_t> strides = {}) {
  rpa_tensor t{};
  t.data = data;
  t.dtype = dtype;
  t.ndim = static_cast<int32_t>(shape.size());
  std::copy(shape.begin(), shape.end(), t.shape);
  std::copy(strides.begin(), strides.end(), t.strides);
  return t;
}

// Scatters a dense row-major array [n0, n1, n2(, n3)] into a padded layout with the given strides.
std::vector<float> scatter(const std::vector<float>& dense, const std::vector<int64_t>& shape,
                           const std::vector<int64_t>& strides, int64_t total, float filler) {
  std::vector<float> out(total, filler);
  std::vector<int64_t> index(shape.size(), 0);
  for (size_t flat = 0; flat < dense.size(); ++flat) {
    int64_t offset = 0;
    for (size_t i = 0; i < shape.size(); ++i) offset += index[i] * strides[i];
    out[offset] = dense[flat];
    for (size_t i = shape.size(); i-- > 0;) {
      if (++index[i] < shape[i]) break;
      index[i] = 0;
    }
  }
  return out;
}

}  // namespace

void Case::round_to_dtypes() {
  for (float& x : queries) x = round_to(query_dtype, x);
  for (float& x : kv) x = round_to(kv_dtype, x);
}

Case dequantised(const Case& c) {
  Case f = c;
  f.kv_dtype = RPA_DTYPE_F32;
  f.k_scale.clear(), f.v_scale.clear();
  const auto scale_of = [&](const std::vector<float>& scales, int64_t head) {
    return scales.empty() ? 1.0f : scales[scales.size() == 1 ? 0 : head];
  };
  for (size_t i = 0; i < f.kv.size(); ++i) {
    const int64_t combined_head = static_cast<int64_t>(i) / c.head_dim % (2 * c.num_kv_heads);
    const std::vector<float>& scales = combined_head % 2 ? c.v_scale : c.k_scale;
    f.kv[i] = c.kv[i] * scale_of(scales, combined_head / 2);
  }
  return f;
}

OwnedContext::OwnedContext(rpa_backend backend) {
  rpa_context_options options;
  rpa_context_options_init(&options);
  options.backend = backend;
  if (rpa_context_create(&options, &context) != RPA_STATUS_OK)
    throw std::runtime_error(std::string("creating a ") + rpa_backend_string(backend) + " context: " + rpa_last_error());
}

OwnedContext::~OwnedContext() { rpa_context_destroy(context); }

std::vector<uint8_t> output_bytes(const Prepared& prepared) {
  std::vector<uint8_t> bytes = prepared.out;
  const uint8_t* lse = reinterpret_cast<const uint8_t*>(prepared.lse.data());
  bytes.insert(bytes.end(), lse, lse + prepared.lse.size() * sizeof(float));
  return bytes;
}

std::vector<uint8_t> simd_output_bytes(Prepared& prepared, int threads) {
  rpa_context_options options;
  rpa_context_options_init(&options);
  options.backend = RPA_BACKEND_SIMD;
  options.num_threads = threads;
  rpa_context* context = nullptr;
  if (rpa_context_create(&options, &context) != RPA_STATUS_OK)
    throw std::runtime_error(std::string("creating a simd context: ") + rpa_last_error());
  const rpa_status status = rpa_attention(context, &prepared.args);
  const std::string message = status == RPA_STATUS_OK ? "" : rpa_last_error();
  rpa_context_destroy(context);
  if (status != RPA_STATUS_OK) throw std::runtime_error("simd call: " + message);
  return output_bytes(prepared);
}

std::vector<rpa_backend> available_backends() {
  std::vector<rpa_backend> backends;
  for (rpa_backend b : {RPA_BACKEND_REFERENCE, RPA_BACKEND_SIMD, RPA_BACKEND_GPU})
    if (rpa_backend_available(b)) backends.push_back(b);
  return backends;
}

Prepared prepare(const Case& c, bool with_lse) {
  Prepared prepared;
  const int64_t T = c.num_tokens, QH = c.num_q_heads, KVH = c.num_kv_heads, D = c.head_dim;
  const int64_t S = static_cast<int64_t>(c.context_lens.size());
  const float nan = std::numeric_limits<float>::quiet_NaN();
  // With `strided`, every float tensor gets gaps filled with NaN: a kernel reading them would show it.
  const int64_t gap = c.strided ? 3 : 0;

  const int64_t q_head_stride = D + gap, q_token_stride = QH * q_head_stride + gap;
  std::vector<uint8_t>& queries = prepared.queries;
  queries = encode(scatter(c.queries, {T, QH, D}, {q_token_stride, q_head_stride, 1}, T * q_token_stride, nan),
             c.query_dtype);

  rpa_attention_args& args = prepared.args;
  rpa_attention_args_init(&args);
  args.queries = tensor(queries.data(), c.query_dtype, {T, QH, D}, {q_token_stride, q_head_stride, 1});

  std::vector<uint8_t>&kv = prepared.kv, &k_cache = prepared.k_cache, &v_cache = prepared.v_cache;
  if (c.separate_kv) {
    const int64_t head = D + gap, slot = KVH * head + gap, page = c.page_size * slot + gap;
    std::vector<float> k(c.num_pages * c.page_size * KVH * D), v(k.size());
    for (int64_t i = 0; i < static_cast<int64_t>(k.size()); ++i) {
      const int64_t d = i % D, h = (i / D) % KVH, rest = i / (D * KVH);
      k[i] = c.kv[(rest * 2 * KVH + 2 * h) * D + d];
      v[i] = c.kv[(rest * 2 * KVH + 2 * h + 1) * D + d];
    }
    const std::vector<int64_t> shape{c.num_pages, c.page_size, KVH, D}, strides{page, slot, head, 1};
    k_cache = encode(scatter(k, shape, strides, c.num_pages * page, nan), c.kv_dtype);
    v_cache = encode(scatter(v, shape, strides, c.num_pages * page, nan), c.kv_dtype);
    args.k_cache = tensor(k_cache.data(), c.kv_dtype, {c.num_pages, c.page_size, KVH, D}, {page, slot, head, 1});
    args.v_cache = tensor(v_cache.data(), c.kv_dtype, {c.num_pages, c.page_size, KVH, D}, {page, slot, head, 1});
  } else {
    kv = encode(c.kv, c.kv_dtype);
    args.kv_pages = tensor(kv.data(), c.kv_dtype, {c.num_pages, c.page_size, 2 * KVH, D}, {c.page_size * 2 * KVH * D, 2 * KVH * D, D, 1});
  }

  std::vector<int32_t>&context_lens = prepared.context_lens, &block_tables = prepared.block_tables,
                      &qsl = prepared.query_start_loc;
  context_lens = c.context_lens, block_tables = c.block_tables, qsl = c.query_start_loc;
  args.context_lens = tensor(context_lens.data(), RPA_DTYPE_I32, {S}, {1});
  args.block_tables = tensor(block_tables.data(), RPA_DTYPE_I32, {S, c.pages_per_seq}, {c.pages_per_seq, 1});
  args.query_start_loc = tensor(qsl.data(), RPA_DTYPE_I32, {S + 1}, {1});
  args.num_seqs = c.num_seqs;
  args.softmax_scale = c.softmax_scale;
  args.logits_soft_cap = c.logits_soft_cap;
  args.sliding_window = c.sliding_window;

  prepared.k_scale = c.k_scale, prepared.v_scale = c.v_scale;
  if (!c.k_scale.empty())
    args.k_scale = tensor(prepared.k_scale.data(), RPA_DTYPE_F32, {static_cast<int64_t>(c.k_scale.size())}, {1});
  if (!c.v_scale.empty())
    args.v_scale = tensor(prepared.v_scale.data(), RPA_DTYPE_F32, {static_cast<int64_t>(c.v_scale.size())}, {1});

  std::vector<float>& sinks = prepared.sinks;
  sinks = c.sinks;
  if (!sinks.empty())
    args.softmax_aux = tensor(sinks.data(), RPA_DTYPE_F32, {c.sink_heads, c.sinks_per_head}, {c.sinks_per_head, 1});

  // Output pre-filled with NaN (as bytes 0xff): every element must be written.
  const int64_t o_head_stride = D + gap, o_token_stride = QH * o_head_stride + gap;
  prepared.out.assign(T * o_token_stride * dtype_size(c.out_dtype), 0xff);
  args.out = tensor(prepared.out.data(), c.out_dtype, {T, QH, D}, {o_token_stride, o_head_stride, 1});
  const int64_t l_token_stride = QH + gap;
  prepared.lse.assign(T * l_token_stride, nan);
  if (with_lse) args.lse = tensor(prepared.lse.data(), RPA_DTYPE_F32, {T, QH}, {l_token_stride, 1});
  return prepared;
}

Result run_prepared(Prepared& prepared, rpa_backend backend) {
  Result result;
  const rpa_attention_args& args = prepared.args;
  rpa_context_options options;
  rpa_context_options_init(&options);
  options.backend = backend;
  rpa_context* context = nullptr;
  result.status = rpa_context_create(&options, &context);
  if (result.status == RPA_STATUS_OK) {
    result.status = rpa_attention(context, &args);
    rpa_context_destroy(context);
  }
  if (result.status != RPA_STATUS_OK) {
    result.message = rpa_last_error();
    return result;
  }
  const rpa_tensor &out = args.out, &lse = args.lse;
  for (int64_t t = 0; t < out.shape[0]; ++t)
    for (int64_t h = 0; h < out.shape[1]; ++h) {
      for (int64_t d = 0; d < out.shape[2]; ++d)
        result.out.push_back(load_float(out.data, out.dtype, t * out.strides[0] + h * out.strides[1] + d));
      if (lse.data) result.lse.push_back(static_cast<const float*>(lse.data)[t * lse.strides[0] + h]);
    }
  return result;
}

Result run_case(const Case& c, rpa_backend backend, bool with_lse) {
  Prepared prepared = prepare(c, with_lse);
  return run_prepared(prepared, backend);
}

Case random_case(const RandomSpec& spec, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Case c;
  const int32_t num_seqs = static_cast<int32_t>(spec.q_lens.size());
  c.num_q_heads = spec.num_q_heads;
  c.num_kv_heads = spec.num_kv_heads;
  c.head_dim = spec.head_dim;
  c.page_size = spec.page_size;
  c.num_seqs = num_seqs;
  const int64_t S = num_seqs + spec.padding_seqs;

  int64_t max_pages = 1, used_pages = 0;
  for (int32_t s = 0; s < num_seqs; ++s) {
    const int64_t pages = (spec.context_lens[s] + c.page_size - 1) / c.page_size;
    max_pages = std::max(max_pages, pages);
    used_pages += pages;
  }
  c.pages_per_seq = max_pages + 1;  // one spare column holding garbage
  c.num_pages = used_pages + spec.extra_pages;
  std::vector<int32_t> pool(c.num_pages);
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), rng);

  // Table entries a sequence never reads hold out-of-range garbage: they must not be read.
  c.block_tables.assign(S * c.pages_per_seq, -7);
  c.context_lens.assign(S, 0);
  c.query_start_loc.assign(S + 1, 0);
  size_t next_page = 0;
  int32_t row = 0;
  for (int32_t s = 0; s < num_seqs; ++s) {
    c.context_lens[s] = spec.context_lens[s];
    c.query_start_loc[s] = row;
    row += spec.q_lens[s];
    for (int64_t p = 0; p * c.page_size < spec.context_lens[s]; ++p) c.block_tables[s * c.pages_per_seq + p] = pool[next_page++];
  }
  c.num_tokens = row + spec.padding_tokens;
  for (int64_t s = num_seqs; s <= S; ++s) c.query_start_loc[s] = row;  // padding sequences: empty, beyond num_seqs
  for (int64_t s = num_seqs; s < S; ++s) c.context_lens[s] = 1 << 30;  // invalid if it were read
  if (c.num_tokens == 0) c.num_tokens = 1;  // shapes must be positive: one uncovered row

  c.queries.resize(c.num_tokens * c.num_q_heads * c.head_dim);
  for (float& x : c.queries) x = normal(rng);
  c.kv.resize(c.num_pages * c.page_size * 2 * c.num_kv_heads * c.head_dim);
  for (float& x : c.kv) x = normal(rng);
  // Unused pages and the slots past each context hold NaN and Inf: they must never matter.
  std::vector<bool> visible_slot(c.num_pages * c.page_size, false);
  for (int32_t s = 0; s < num_seqs; ++s)
    for (int64_t j = 0; j < c.context_lens[s]; ++j)
      visible_slot[c.block_tables[s * c.pages_per_seq + j / c.page_size] * c.page_size + j % c.page_size] = true;
  for (int64_t slot = 0; slot < c.num_pages * c.page_size; ++slot)
    if (!visible_slot[slot])
      for (int64_t i = 0; i < 2 * c.num_kv_heads * c.head_dim; ++i)
        c.kv[slot * 2 * c.num_kv_heads * c.head_dim + i] =
            (i % 2) ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  return c;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) return std::numeric_limits<double>::infinity();  // never expected
    if (a[i] == b[i]) continue;  // equal infinities
    worst = std::max(worst, std::abs(static_cast<double>(a[i]) - b[i]));
  }
  return worst;
}

}  // namespace rpa::testing
