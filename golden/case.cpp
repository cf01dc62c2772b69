#include "golden/case.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <cstdlib>
#include <sstream>

#include "core/dtype.h"

namespace rpa::golden {
namespace {

int64_t product(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// The tensor `name` of the file as an Array (absent when the file has none), with its rank and dtype
// checked: floats F32/F16/BF16 (KV also the reserved F8/I8), metadata I32.
Array take(const StFile& file, const std::string& name, size_t rank, bool is_int, bool kv = false) {
  const StTensor* t = file.find(name);
  if (!t) return {};
  if (t->shape.size() != rank)
    throw FormatError("tensor '" + name + "': shape " + shape_text(t->shape) + " has " + std::to_string(t->shape.size()) +
                      " dimensions, expected " + std::to_string(rank));
  Array a;
  a.dtype = rpa_dtype_of(t->dtype, name);
  const bool ok = is_int ? a.dtype == RPA_DTYPE_I32
                         : a.dtype == RPA_DTYPE_F32 || a.dtype == RPA_DTYPE_F16 || a.dtype == RPA_DTYPE_BF16 ||
                               (kv && a.dtype != RPA_DTYPE_I32);
  if (!ok)
    throw FormatError("tensor '" + name + "': dtype " + t->dtype + " is not allowed here (expected " +
                      (is_int ? "I32" : kv ? "F32, F16, BF16, F8_E4M3, F8_E5M2 or I8" : "F32, F16 or BF16") + ")");
  for (int64_t d : t->shape)
    if (d == 0) throw FormatError("tensor '" + name + "': shape " + shape_text(t->shape) + " has a zero extent");
  a.shape = t->shape;
  a.bytes = t->bytes;
  return a;
}

Array require(const StFile& file, const std::string& name, size_t rank, bool is_int) {
  Array a = take(file, name, rank, is_int);
  if (!a.present()) throw FormatError("tensor '" + name + "' is missing");
  return a;
}

double number(const std::map<std::string, std::string>& metadata, const std::string& key, double fallback) {
  const auto it = metadata.find(key);
  if (it == metadata.end()) return fallback;
  const char* text = it->second.c_str();
  char* end = nullptr;
  const double value = std::strtod(text, &end);
  if (end == text || *end != '\0')
    throw FormatError("__metadata__: '" + key + "' is \"" + it->second + "\", not a number");
  return value;
}

int32_t integer(const std::map<std::string, std::string>& metadata, const std::string& key, int32_t fallback) {
  const double value = number(metadata, key, fallback);
  if (value != std::floor(value) || value < -2147483648.0 || value > 2147483647.0)
    throw FormatError("__metadata__: '" + key + "' is \"" + metadata.at(key) + "\", not a 32-bit integer");
  return static_cast<int32_t>(value);
}

std::string format_number(double value) {
  std::ostringstream s;
  s.precision(17);
  s << value;
  return s.str();
}

StTensor to_st(const std::string& name, const Array& a) { return {name, st_dtype_name(a.dtype), a.shape, a.bytes}; }

}  // namespace

int64_t Array::size() const { return present() ? product(shape) : 0; }
float Array::at(int64_t index) const { return load_float(bytes.data(), dtype, index); }
int32_t Array::int_at(int64_t index) const { return reinterpret_cast<const int32_t*>(bytes.data())[index]; }
void Array::set(int64_t index, float value) { store_float(bytes.data(), dtype, index, value); }

rpa_tensor Array::tensor() const {
  rpa_tensor t{};
  if (!present()) return t;
  t.data = const_cast<uint8_t*>(bytes.data());  // the C ABI takes inputs through non-const pointers
  t.dtype = dtype;
  t.ndim = static_cast<int32_t>(shape.size());
  for (size_t i = 0; i < shape.size() && i < RPA_MAX_DIMS; ++i) t.shape[i] = shape[i];
  return t;
}

Array Array::zeros(rpa_dtype dtype, std::vector<int64_t> shape) {
  Array a;
  a.dtype = dtype;
  a.shape = std::move(shape);
  a.bytes.assign(static_cast<size_t>(product(a.shape) * dtype_size(dtype)), 0);
  return a;
}

Array Array::of_ints(const std::vector<int32_t>& values, std::vector<int64_t> shape) {
  Array a = zeros(RPA_DTYPE_I32, std::move(shape));
  std::memcpy(a.bytes.data(), values.data(), a.bytes.size());
  return a;
}

const char* st_dtype_name(rpa_dtype dtype) {
  switch (dtype) {
    case RPA_DTYPE_F32: return "F32";
    case RPA_DTYPE_F16: return "F16";
    case RPA_DTYPE_BF16: return "BF16";
    case RPA_DTYPE_FP8_E4M3: return "F8_E4M3";
    case RPA_DTYPE_FP8_E5M2: return "F8_E5M2";
    case RPA_DTYPE_INT8: return "I8";
    case RPA_DTYPE_I32: return "I32";
  }
  return "?";
}

rpa_dtype rpa_dtype_of(const std::string& name, const std::string& tensor) {
  for (rpa_dtype d : {RPA_DTYPE_F32, RPA_DTYPE_F16, RPA_DTYPE_BF16, RPA_DTYPE_FP8_E4M3, RPA_DTYPE_FP8_E5M2,
                      RPA_DTYPE_INT8, RPA_DTYPE_I32})
    if (name == st_dtype_name(d)) return d;
  throw FormatError("tensor '" + tensor + "': dtype " + name + " is not one rpa stores");
}

int64_t Case::kv_heads() const { return combined() ? kv_pages.shape[2] / 2 : k_cache.shape[2]; }
int64_t Case::num_pages() const { return combined() ? kv_pages.shape[0] : k_cache.shape[0]; }
int64_t Case::page_size() const { return combined() ? kv_pages.shape[1] : k_cache.shape[1]; }

// KV elements through load_kv/store_kv: a quantised cache (case files carry no scales: scale 1) holds
// one-byte codes, not floats.
float Case::k(int64_t page, int64_t slot, int64_t head, int64_t d) const {
  const int64_t D = head_dim(), KVH = kv_heads(), ps = page_size();
  if (combined()) return load_kv(kv_pages.bytes.data(), kv_pages.dtype, ((page * ps + slot) * 2 * KVH + 2 * head) * D + d, 1.0f);
  return load_kv(k_cache.bytes.data(), k_cache.dtype, ((page * ps + slot) * KVH + head) * D + d, 1.0f);
}

float Case::v(int64_t page, int64_t slot, int64_t head, int64_t d) const {
  const int64_t D = head_dim(), KVH = kv_heads(), ps = page_size();
  if (combined()) return load_kv(kv_pages.bytes.data(), kv_pages.dtype, ((page * ps + slot) * 2 * KVH + 2 * head + 1) * D + d, 1.0f);
  return load_kv(v_cache.bytes.data(), v_cache.dtype, ((page * ps + slot) * KVH + head) * D + d, 1.0f);
}

void Case::set_kv(int64_t page, int64_t slot, int64_t head, int64_t d, float k_value, float v_value) {
  const int64_t D = head_dim(), KVH = kv_heads(), ps = page_size();
  if (combined()) {
    store_kv(kv_pages.bytes.data(), kv_pages.dtype, ((page * ps + slot) * 2 * KVH + 2 * head) * D + d, k_value, 1.0f);
    store_kv(kv_pages.bytes.data(), kv_pages.dtype, ((page * ps + slot) * 2 * KVH + 2 * head + 1) * D + d, v_value, 1.0f);
  } else {
    store_kv(k_cache.bytes.data(), k_cache.dtype, ((page * ps + slot) * KVH + head) * D + d, k_value, 1.0f);
    store_kv(v_cache.bytes.data(), v_cache.dtype, ((page * ps + slot) * KVH + head) * D + d, v_value, 1.0f);
  }
}

double Case::scale() const { return softmax_scale != 0 ? softmax_scale : 1.0 / std::sqrt(static_cast<double>(head_dim())); }

Case case_from_file(const StFile& file) {
  static const char* const kKnown[] = {"queries", "kv_pages", "k_cache", "v_cache", "context_lens",
                                       "block_tables", "query_start_loc", "softmax_aux"};
  for (const StTensor& t : file.tensors)
    if (std::find(std::begin(kKnown), std::end(kKnown), t.name) == std::end(kKnown))
      throw FormatError("tensor '" + t.name + "': not a case tensor (expected queries, kv_pages or k_cache and "
                        "v_cache, context_lens, block_tables, query_start_loc, softmax_aux)");
  Case c;
  c.queries = require(file, "queries", 3, false);
  c.kv_pages = take(file, "kv_pages", 4, false, true);
  c.k_cache = take(file, "k_cache", 4, false, true);
  c.v_cache = take(file, "v_cache", 4, false, true);
  if (c.kv_pages.present() && (c.k_cache.present() || c.v_cache.present()))
    throw FormatError("tensor 'kv_pages': given together with k_cache/v_cache; a case holds one layout");
  if (!c.kv_pages.present() && !(c.k_cache.present() && c.v_cache.present()))
    throw FormatError(c.k_cache.present() || c.v_cache.present()
                          ? std::string("tensor '") + (c.k_cache.present() ? "v_cache" : "k_cache") + "' is missing"
                          : std::string("tensor 'kv_pages' (or k_cache and v_cache) is missing"));
  c.context_lens = require(file, "context_lens", 1, true);
  c.block_tables = require(file, "block_tables", 2, true);
  c.query_start_loc = require(file, "query_start_loc", 1, true);
  c.softmax_aux = take(file, "softmax_aux", 2, false);
  if (!file.metadata.count("num_seqs")) throw FormatError("__metadata__: 'num_seqs' is missing");
  c.num_seqs = integer(file.metadata, "num_seqs", 0);
  c.softmax_scale = number(file.metadata, "softmax_scale", 0);
  c.logits_soft_cap = number(file.metadata, "logits_soft_cap", 0);
  c.sliding_window = integer(file.metadata, "sliding_window", 0);
  for (const auto& [key, value] : file.metadata)
    if (key != "num_seqs" && key != "softmax_scale" && key != "logits_soft_cap" && key != "sliding_window")
      c.notes[key] = value;
  return c;
}

StFile file_from_case(const Case& c) {
  StFile file;
  file.tensors.push_back(to_st("queries", c.queries));
  if (c.combined()) {
    file.tensors.push_back(to_st("kv_pages", c.kv_pages));
  } else {
    file.tensors.push_back(to_st("k_cache", c.k_cache));
    file.tensors.push_back(to_st("v_cache", c.v_cache));
  }
  file.tensors.push_back(to_st("context_lens", c.context_lens));
  file.tensors.push_back(to_st("block_tables", c.block_tables));
  file.tensors.push_back(to_st("query_start_loc", c.query_start_loc));
  if (c.softmax_aux.present()) file.tensors.push_back(to_st("softmax_aux", c.softmax_aux));
  file.metadata = c.notes;
  file.metadata["num_seqs"] = std::to_string(c.num_seqs);
  if (c.softmax_scale != 0) file.metadata["softmax_scale"] = format_number(c.softmax_scale);
  if (c.logits_soft_cap != 0) file.metadata["logits_soft_cap"] = format_number(c.logits_soft_cap);
  if (c.sliding_window != 0) file.metadata["sliding_window"] = std::to_string(c.sliding_window);
  return file;
}

Candidate candidate_from_file(const StFile& file) {
  for (const StTensor& t : file.tensors)
    if (t.name != "output" && t.name != "lse")
      throw FormatError("tensor '" + t.name + "': not a candidate tensor (expected output and optionally lse)");
  Candidate c;
  c.output = require(file, "output", 3, false);
  c.lse = take(file, "lse", 2, false);
  if (c.lse.present() && c.lse.dtype != RPA_DTYPE_F32)
    throw FormatError(std::string("tensor 'lse': dtype ") + st_dtype_name(c.lse.dtype) + " is not allowed here (expected F32)");
  return c;
}

StFile file_from_candidate(const Candidate& c) {
  StFile file;
  file.tensors.push_back(to_st("output", c.output));
  if (c.lse.present()) file.tensors.push_back(to_st("lse", c.lse));
  return file;
}

Case parse_case(const uint8_t* data, size_t size) { return case_from_file(parse_safetensors(data, size)); }

Case load_case(const std::string& path) { return case_from_file(read_safetensors(path)); }
void save_case(const std::string& path, const Case& c) { write_safetensors(path, file_from_case(c)); }
Candidate load_candidate(const std::string& path) { return candidate_from_file(read_safetensors(path)); }
void save_candidate(const std::string& path, const Candidate& c) { write_safetensors(path, file_from_candidate(c)); }

rpa_attention_args args_for(const Case& c, Array& out, Array* lse) {
  rpa_attention_args args;
  rpa_attention_args_init(&args);
  args.queries = c.queries.tensor();
  args.kv_pages = c.kv_pages.tensor();
  args.k_cache = c.k_cache.tensor();
  args.v_cache = c.v_cache.tensor();
  args.context_lens = c.context_lens.tensor();
  args.block_tables = c.block_tables.tensor();
  args.query_start_loc = c.query_start_loc.tensor();
  args.num_seqs = c.num_seqs;
  args.softmax_scale = c.softmax_scale;
  args.logits_soft_cap = c.logits_soft_cap;
  args.sliding_window = c.sliding_window;
  args.softmax_aux = c.softmax_aux.tensor();
  args.out = out.tensor();
  if (lse) args.lse = lse->tensor();
  return args;
}

Candidate run_case(const Case& c, rpa_backend backend, rpa_dtype out_dtype, bool with_lse) {
  Candidate result;
  result.output = Array::zeros(out_dtype, c.queries.shape);
  if (with_lse) result.lse = Array::zeros(RPA_DTYPE_F32, {c.queries.shape[0], c.queries.shape[1]});
  const rpa_attention_args args = args_for(c, result.output, with_lse ? &result.lse : nullptr);
  rpa_context_options options;
  rpa_context_options_init(&options);
  options.backend = backend;
  rpa_context* context = nullptr;
  if (rpa_context_create(&options, &context) != RPA_STATUS_OK)
    throw std::runtime_error(std::string(rpa_backend_string(backend)) + ": " + rpa_last_error());
  const rpa_status status = rpa_attention(context, &args);
  const std::string message = status == RPA_STATUS_OK ? "" : rpa_last_error();
  rpa_context_destroy(context);
  if (status == RPA_STATUS_INVALID_ARGUMENT || status == RPA_STATUS_UNSUPPORTED)
    throw std::invalid_argument(std::string(rpa_status_string(status)) + ": " + message);
  if (status != RPA_STATUS_OK) throw std::runtime_error(std::string(rpa_status_string(status)) + ": " + message);
  return result;
}

}  // namespace rpa::golden
