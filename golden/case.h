// Cases and candidates as files. A case holds the inputs of one rpa_attention call; a candidate holds a
// kernel's answer to it. Both are safetensors files (README, "Case files"); this is their one C++ home,
// shared by the `rpa` command's make-case / run / check / suite and by the benchmark.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "golden/safetensors.h"
#include "rpa/rpa.h"

namespace rpa::golden {

// A dense row-major tensor in one of rpa's dtypes. Absent when shape is empty.
struct Array {
  rpa_dtype dtype = RPA_DTYPE_F32;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;

  bool present() const { return !shape.empty(); }
  int64_t size() const;
  float at(int64_t index) const;       // float dtypes
  int32_t int_at(int64_t index) const;  // I32
  void set(int64_t index, float value);
  rpa_tensor tensor() const;  // a contiguous view for the C ABI (absent: all zero)

  static Array zeros(rpa_dtype dtype, std::vector<int64_t> shape);
  static Array of_ints(const std::vector<int32_t>& values, std::vector<int64_t> shape);
};

// The safetensors name of an rpa dtype, and back (throws FormatError for one rpa does not store).
const char* st_dtype_name(rpa_dtype dtype);
rpa_dtype rpa_dtype_of(const std::string& name, const std::string& tensor);

struct Case {
  Array queries;                 // [T, QH, D]
  Array kv_pages;                // [P, page_size, 2*KVH, D], or
  Array k_cache, v_cache;        // [P, page_size, KVH, D] each
  Array context_lens;            // I32 [S]
  Array block_tables;            // I32 [S, W]
  Array query_start_loc;         // I32 [S+1]
  Array softmax_aux;             // optional [H_s, n]
  int32_t num_seqs = 0;
  double softmax_scale = 0;      // 0: the default 1/sqrt(D)
  double logits_soft_cap = 0;    // 0: none
  int32_t sliding_window = 0;    // 0: none
  std::map<std::string, std::string> notes;  // other metadata, kept as is (e.g. what a suite case probes)

  bool combined() const { return kv_pages.present(); }
  int64_t tokens() const { return queries.shape[0]; }
  int64_t q_heads() const { return queries.shape[1]; }
  int64_t head_dim() const { return queries.shape[2]; }
  int64_t kv_heads() const;
  int64_t num_pages() const;
  int64_t page_size() const;
  int64_t width() const { return block_tables.shape[1]; }
  int64_t seqs() const { return context_lens.shape[0]; }
  rpa_dtype kv_dtype() const { return combined() ? kv_pages.dtype : k_cache.dtype; }
  // K or V element of (page, slot, kv head, d), in either layout.
  float k(int64_t page, int64_t slot, int64_t head, int64_t d) const;
  float v(int64_t page, int64_t slot, int64_t head, int64_t d) const;
  void set_kv(int64_t page, int64_t slot, int64_t head, int64_t d, float k_value, float v_value);
  double scale() const;  // the resolved softmax scale
};

// A kernel's answer: output [T, QH, D] in any float dtype and optionally lse [T, QH] F32.
struct Candidate {
  Array output, lse;
};

// Conversions to and from the file form. case_from_file checks names, dtypes, ranks and the metadata;
// the contract's rules (shapes agreeing, ranges) are checked by the library when the case is run.
Case case_from_file(const StFile& file);
StFile file_from_case(const Case& c);
Candidate candidate_from_file(const StFile& file);
StFile file_from_candidate(const Candidate& c);

// A case file held in memory: parse_safetensors then case_from_file. The entry point to fuzz for the
// whole case reader: it throws FormatError and nothing else for bytes that are not a case.
Case parse_case(const uint8_t* data, size_t size);

Case load_case(const std::string& path);
void save_case(const std::string& path, const Case& c);
Candidate load_candidate(const std::string& path);
void save_candidate(const std::string& path, const Candidate& c);

// Arguments of rpa_attention for the case writing into `out` (and `lse` when present).
rpa_attention_args args_for(const Case& c, Array& out, Array* lse);

// Runs the case on `backend`; throws std::invalid_argument (the library's message) when the library
// rejects the case, std::runtime_error when the backend cannot run.
Candidate run_case(const Case& c, rpa_backend backend, rpa_dtype out_dtype, bool with_lse);

}  // namespace rpa::golden
