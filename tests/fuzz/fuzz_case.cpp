// libFuzzer harness over the case-file reader of `rpa check` / `rpa run` (golden/safetensors.cpp,
// golden/case.cpp) and what runs behind it. For any bytes:
//   - parse_safetensors either throws FormatError (nothing else) or gives a file whose serialisation
//     parses back to the same names, dtypes, shapes, bytes and metadata;
//   - case_from_file and candidate_from_file either throw FormatError or give a case (candidate) whose
//     file form reads back to the same case (candidate);
//   - a small enough case runs on the reference: success, or a refusal naming an argument; and then
//     `rpa check` passes the reference's own answer and, with one element moved by 1, reports exactly
//     that row as wrong.
// Build: tools/sanitize.sh (Meson option fuzz).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "golden/case.h"
#include "golden/check.h"
#include "golden/safetensors.h"
#include "rpa/rpa.h"

namespace {

using namespace rpa::golden;

[[noreturn]] void fail(const std::string& why) {
  std::fprintf(stderr, "fuzz_case: %s\n", why.c_str());
  std::abort();
}

bool same(const Array& a, const Array& b) { return a.dtype == b.dtype && a.shape == b.shape && a.bytes == b.bytes; }

bool same_file(const StFile& a, const StFile& b) {
  if (a.metadata != b.metadata || a.tensors.size() != b.tensors.size()) return false;
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    const StTensor &x = a.tensors[i], &y = b.tensors[i];
    if (x.name != y.name || x.dtype != y.dtype || x.shape != y.shape || x.bytes != y.bytes) return false;
  }
  return true;
}

// NaN-aware equality of two metadata numbers (a NaN scale must read back as NaN).
bool same_number(double a, double b) { return a == b || (std::isnan(a) && std::isnan(b)); }

bool same_case(const Case& a, const Case& b) {
  return same(a.queries, b.queries) && same(a.kv_pages, b.kv_pages) && same(a.k_cache, b.k_cache) &&
         same(a.v_cache, b.v_cache) && same(a.context_lens, b.context_lens) && same(a.block_tables, b.block_tables) &&
         same(a.query_start_loc, b.query_start_loc) && same(a.softmax_aux, b.softmax_aux) &&
         a.num_seqs == b.num_seqs && same_number(a.softmax_scale, b.softmax_scale) &&
         same_number(a.logits_soft_cap, b.logits_soft_cap) && a.sliding_window == b.sliding_window &&
         a.notes == b.notes;
}

rpa_context* reference_context() {
  rpa_context_options options;
  rpa_context_options_init(&options);
  options.backend = RPA_BACKEND_REFERENCE;
  options.num_threads = 1;
  rpa_context* context = nullptr;
  if (rpa_context_create(&options, &context) != RPA_STATUS_OK) fail(std::string("context: ") + rpa_last_error());
  return context;
}

// The case on the reference, then `rpa check` against its own answer and a one-element change of it.
void run_and_check(const Case& c) {
  static rpa_context* const reference = reference_context();
  // An upper bound of the reference's work: every row against every key a table row can address.
  const double work = static_cast<double>(c.tokens()) * c.q_heads() * c.head_dim() * c.width() * c.page_size();
  if (work > 2e6) return;
  Candidate answer;
  answer.output = Array::zeros(RPA_DTYPE_F32, c.queries.shape);
  answer.lse = Array::zeros(RPA_DTYPE_F32, {c.tokens(), c.q_heads()});
  const rpa_attention_args args = args_for(c, answer.output, &answer.lse);
  const rpa_status status = rpa_attention(reference, &args);
  if (status != RPA_STATUS_OK) {
    const std::string message = rpa_last_error();
    if (status != RPA_STATUS_INVALID_ARGUMENT || message.find("argument '") == std::string::npos)
      fail(std::string("the reference answers ") + rpa_status_string(status) + ": " + message);
    return;
  }
  for (int64_t i = 0; i < answer.output.size(); ++i)
    if (!std::isfinite(answer.output.at(i))) return;  // NaN inputs in visible slots: nothing to compare
  Report report;
  try {
    report = check(c, answer);
  } catch (const std::exception& e) {
    fail(std::string("check of the reference's own answer threw: ") + e.what());
  }
  if (!report.pass) fail("check fails the reference's own answer: " + report.summary());
  // One element moved by 1 + |itself| (well beyond the f32 tolerance): exactly its row is wrong.
  const int64_t index = static_cast<int64_t>(c.queries.bytes.size() * 31 % static_cast<size_t>(answer.output.size()));
  const float x = answer.output.at(index);
  answer.output.set(index, x + 1 + std::fabs(x));
  const int64_t row = index / (c.q_heads() * c.head_dim());
  try {
    report = check(c, answer);
  } catch (const std::exception& e) {
    fail(std::string("check of a changed answer threw: ") + e.what());
  }
  if (report.pass || report.wrong_rows != std::vector<int64_t>{row})
    fail("one element of row " + std::to_string(row) + " moved by 1: " + report.summary());
  if (report.findings.size() != 1 || report.findings[0].row != row) fail("the diagnosis does not name row " + std::to_string(row));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  StFile file;
  try {
    file = parse_safetensors(data, size);
  } catch (const FormatError&) {
    return 0;
  } catch (const std::exception& e) {
    fail(std::string("parse_safetensors threw something other than FormatError: ") + e.what());
  }
  const std::vector<uint8_t> bytes = serialize_safetensors(file);
  StFile again;
  try {
    again = parse_safetensors(bytes.data(), bytes.size());
  } catch (const std::exception& e) {
    fail(std::string("a serialised file does not parse: ") + e.what());
  }
  if (!same_file(file, again)) fail("a file does not survive serialisation");

  try {
    const Candidate candidate = candidate_from_file(file);
    const Candidate back = candidate_from_file(file_from_candidate(candidate));
    if (!same(candidate.output, back.output) || !same(candidate.lse, back.lse)) fail("a candidate does not read back");
  } catch (const FormatError&) {
  } catch (const std::exception& e) {
    fail(std::string("candidate_from_file threw something other than FormatError: ") + e.what());
  }

  Case c;
  try {
    c = case_from_file(file);
  } catch (const FormatError&) {
    return 0;
  } catch (const std::exception& e) {
    fail(std::string("case_from_file threw something other than FormatError: ") + e.what());
  }
  try {
    if (!same_case(c, case_from_file(file_from_case(c)))) fail("a case does not read back");
  } catch (const FormatError& e) {
    fail(std::string("a case's own file is refused: ") + e.what());
  }
  run_and_check(c);
  return 0;
}
