// The golden toolkit's C++ side: safetensors round trips of every dtype, each malformed kind rejected
// with its message, case files round-tripping, and the diagnostic reference equal to the reference
// backend under the contract's rules (so its altered rules are the only difference).
#define BOOST_TEST_MODULE golden
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <string>

#include "core/dtype.h"
#include "golden/check.h"
#include "golden/generate.h"
#include "golden/safetensors.h"
#include "golden/suite.h"
#include "golden/variant.h"

using namespace rpa::golden;

namespace {

std::vector<uint8_t> file_bytes(const std::string& header, size_t data_bytes) {
  std::vector<uint8_t> bytes(8 + header.size() + data_bytes, 0x3c);
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<uint8_t>(static_cast<uint64_t>(header.size()) >> (8 * i));
  std::memcpy(bytes.data() + 8, header.data(), header.size());
  return bytes;
}

// The message parse_safetensors rejects `bytes` with ("" when it accepts them).
std::string rejection(const std::vector<uint8_t>& bytes) {
  try {
    parse_safetensors(bytes.data(), bytes.size());
  } catch (const FormatError& e) {
    return e.what();
  }
  return "";
}

void expect_rejection(const std::string& header, size_t data_bytes, const std::string& message) {
  const std::string got = rejection(file_bytes(header, data_bytes));
  BOOST_TEST_INFO("header " << header << " -> " << got);
  BOOST_TEST(got.find(message) != std::string::npos);
}

// A case as a file, edited by `edit`, read back: the message case_from_file rejects it with.
template <typename Edit>
std::string case_rejection(Edit&& edit) {
  StFile file = file_from_case(make_case(preset("decode")));
  edit(file);
  try {
    case_from_file(parse_safetensors(serialize_safetensors(file).data(), serialize_safetensors(file).size()));
  } catch (const FormatError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

BOOST_AUTO_TEST_CASE(round_trip_of_every_dtype) {
  StFile file;
  file.metadata = {{"num_seqs", "3"}, {"note", "ünïcode ok"}};
  int n = 0;
  for (const char* dtype : {"F32", "F16", "BF16", "I32", "F8_E4M3", "F8_E5M2", "I8", "F64", "I64", "U8", "BOOL",
                            "I16", "U16", "U32", "U64"}) {
    StTensor t{std::string("t_") + dtype, dtype, {2, 3}, {}};
    for (int i = 0; i < 6 * st_dtype_size(dtype); ++i) t.bytes.push_back(static_cast<uint8_t>(i * 37 + n));
    file.tensors.push_back(t);
    ++n;
  }
  file.tensors.push_back({"empty", "F32", {0, 4}, {}});
  const std::vector<uint8_t> bytes = serialize_safetensors(file);
  BOOST_TEST((bytes[0] + 8) % 8 == 0);  // the header is padded to a multiple of 8
  const StFile back = parse_safetensors(bytes.data(), bytes.size());
  BOOST_TEST(back.metadata == file.metadata);
  BOOST_REQUIRE(back.tensors.size() == file.tensors.size());
  for (size_t i = 0; i < file.tensors.size(); ++i) {
    const StTensor* t = back.find(file.tensors[i].name);
    BOOST_REQUIRE(t);
    BOOST_TEST(t->dtype == file.tensors[i].dtype);
    BOOST_TEST(t->shape == file.tensors[i].shape);
    BOOST_TEST(t->bytes == file.tensors[i].bytes);
  }
  const std::string path = "golden_round_trip.safetensors";
  write_safetensors(path, file);
  BOOST_TEST(read_safetensors(path).find("t_BF16")->bytes == file.tensors[2].bytes);
  std::remove(path.c_str());
}

BOOST_AUTO_TEST_CASE(every_malformed_kind_is_rejected_with_its_message) {
  BOOST_TEST(rejection({1, 2, 3}).find("truncated: 3 bytes") != std::string::npos);
  std::vector<uint8_t> long_header = file_bytes("{}", 0);
  long_header[0] = 200;
  BOOST_TEST(rejection(long_header).find("header length 200 runs past the end of the file (10 bytes)") != std::string::npos);
  expect_rejection("{\"a\": ", 0, "header is not valid JSON");
  expect_rejection("{\"a\": 1e99999}", 0, "header is not valid JSON");  // nlohmann's out_of_range, not a parse_error
  expect_rejection("[1, 2]", 0, "header is not a JSON object");
  expect_rejection(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})", 12,
                   "tensor 'b': its bytes overlap those of tensor 'a'");
  expect_rejection(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 8,
                   "tensor 'a': data_offsets [0, 16] run past the end of the data (8 bytes)");
  expect_rejection(R"({"a": {"dtype": "F7", "shape": [2], "data_offsets": [0, 8]}})", 8, "tensor 'a': unknown dtype 'F7'");
  expect_rejection(R"({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", 8,
                   "tensor 'a': shape [3] of F32 does not match its 8 bytes");
  expect_rejection(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                      "a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}})", 16, "tensor 'a': named twice");
  expect_rejection(R"({"__metadata__": {"num_seqs": 3}})", 0, "__metadata__: value of 'num_seqs' is not a string");
  expect_rejection(R"({"__metadata__": [1]})", 0, "__metadata__ is not an object");
  expect_rejection(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})", 8, "end before they begin");
  expect_rejection(R"({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", 8,
                   "tensor 'a': shape holds -2, not a non-negative integer");
  expect_rejection(R"({"a": {"dtype": "F32", "shape": [4294967296, 4294967296, 2], "data_offsets": [0, 8]}})", 8,
                   "does not match");
  expect_rejection(R"({"a": {"dtype": "F32", "shape": [2]}})", 8, "tensor 'a': no data_offsets");
  expect_rejection(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})", 8,
                   "bytes 0..4 of the data belong to no tensor");
  expect_rejection(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})", 8,
                   "4 bytes after the last tensor's data belong to no tensor");

  // The case level: names, ranks, dtypes, metadata.
  BOOST_TEST(case_rejection([](StFile& f) { f.tensors.erase(f.tensors.begin() + 2); }) ==
             "tensor 'context_lens' is missing");
  BOOST_TEST(case_rejection([](StFile& f) { f.tensors[1].name = "k_cache"; }) == "tensor 'v_cache' is missing");
  BOOST_TEST(case_rejection([](StFile& f) { f.metadata.erase("num_seqs"); }) == "__metadata__: 'num_seqs' is missing");
  BOOST_TEST(case_rejection([](StFile& f) { f.metadata["num_seqs"] = "2.5"; }).find("not a 32-bit integer") !=
             std::string::npos);
  BOOST_TEST(case_rejection([](StFile& f) { f.metadata["softmax_scale"] = "x"; }).find("'softmax_scale' is \"x\", not a number") !=
             std::string::npos);
  BOOST_TEST(case_rejection([](StFile& f) { f.tensors[2].dtype = "F32"; }).find(
                 "tensor 'context_lens': dtype F32 is not allowed here (expected I32)") != std::string::npos);
  BOOST_TEST(case_rejection([](StFile& f) { f.tensors[0].shape = {f.tensors[0].shape[0] * 8, 64}; }).find(
                 "tensor 'queries': shape") != std::string::npos);
  BOOST_TEST(case_rejection([](StFile& f) { f.tensors.push_back({"extra", "F32", {1}, {0, 0, 0, 0}}); }).find(
                 "tensor 'extra': not a case tensor") != std::string::npos);
  BOOST_TEST(case_rejection([](StFile&) {}) == "");
}

// Random corruptions of a valid case: each is a case or a FormatError, never another exception or a crash
// (ASan/UBSan builds make an out-of-bounds read a failure too).
BOOST_AUTO_TEST_CASE(corrupted_files_fail_only_with_format_errors) {
  const std::vector<uint8_t> good = serialize_safetensors(file_from_case(make_case(preset("sinks"))));
  std::mt19937 rng(5);
  int rejected = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::vector<uint8_t> bytes = good;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      // Mostly the header, where the structure is.
      const size_t at = rng() % 4 ? rng() % std::min<size_t>(bytes.size(), 600) : rng() % bytes.size();
      switch (rng() % 3) {
        case 0: bytes[at] = static_cast<uint8_t>(rng()); break;
        case 1: bytes.erase(bytes.begin() + static_cast<std::ptrdiff_t>(at)); break;
        default: bytes.resize(at); break;
      }
      if (bytes.empty()) break;
    }
    try {
      parse_case(bytes.data(), bytes.size());
    } catch (const FormatError&) {
      ++rejected;
    }
  }
  BOOST_TEST(rejected > 2500);
  std::string deep(100000, '[');
  expect_rejection(deep, 0, "nests deeper");
}

BOOST_AUTO_TEST_CASE(a_file_shorter_than_its_header_declares_is_rejected_when_read) {
  StFile file = file_from_case(make_case(preset("decode")));
  std::vector<uint8_t> bytes = serialize_safetensors(file);
  bytes.resize(bytes.size() - 5);
  const std::string path = "golden_truncated.safetensors";
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  std::string message;
  try {
    read_safetensors(path);
  } catch (const FormatError& e) {
    message = e.what();
  }
  std::remove(path.c_str());
  BOOST_TEST(message.find("run past the end of the data") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(cases_round_trip_in_every_layout_and_dtype) {
  for (rpa_dtype dtype : {RPA_DTYPE_F32, RPA_DTYPE_F16, RPA_DTYPE_BF16})
    for (bool separate : {false, true}) {
      Spec spec = preset("sinks");
      spec.query_dtype = spec.kv_dtype = spec.sink_dtype = dtype;
      spec.separate_kv = separate;
      spec.sliding_window = 7;
      spec.logits_soft_cap = 2.5;
      spec.softmax_scale = 0.125;
      spec.padding_seqs = 1;
      spec.padding_tokens = 2;
      const Case c = make_case(spec);
      const StFile file = file_from_case(c);
      const std::vector<uint8_t> bytes = serialize_safetensors(file);
      const Case back = case_from_file(parse_safetensors(bytes.data(), bytes.size()));
      BOOST_TEST(back.queries.bytes == c.queries.bytes);
      BOOST_TEST(back.queries.dtype == dtype);
      BOOST_TEST(back.combined() == !separate);
      BOOST_TEST((separate ? back.v_cache.bytes == c.v_cache.bytes : back.kv_pages.bytes == c.kv_pages.bytes));
      BOOST_TEST(back.block_tables.bytes == c.block_tables.bytes);
      BOOST_TEST(back.softmax_aux.bytes == c.softmax_aux.bytes);
      BOOST_TEST(back.num_seqs == c.num_seqs);
      BOOST_TEST(back.seqs() == c.num_seqs + 1);
      BOOST_TEST(back.softmax_scale == 0.125);
      BOOST_TEST(back.logits_soft_cap == 2.5);
      BOOST_TEST(back.sliding_window == 7);
    }
}

// Every suite case (which together cover windows, sinks of every shape, caps, GQA 1..8, both layouts,
// 16-bit dtypes and NaN-filled slots): the variant reference with no alteration is the reference backend.
BOOST_AUTO_TEST_CASE(the_unaltered_variant_is_the_reference) {
  for (const SuiteCase& sc : suite_cases()) {
    const Case c = make_case(sc.spec);
    const Candidate ref = run_case(c, RPA_BACKEND_REFERENCE, RPA_DTYPE_F32, true);
    const int64_t QH = c.q_heads(), D = c.head_dim();
    double worst = 0;
    std::vector<double> row(static_cast<size_t>(D));
    for (int64_t s = 0; s < c.num_seqs; ++s) {
      const int64_t first = c.query_start_loc.int_at(s), last = c.query_start_loc.int_at(s + 1);
      for (int64_t t = first; t < last; ++t)
        for (int64_t h = 0; h < QH; ++h) {
          const double lse = variant_row(c, Variant{}, t, s, c.context_lens.int_at(s) - (last - first) + (t - first), h,
                                         row.data());
          worst = std::max(worst, std::abs(lse - ref.lse.at(t * QH + h)));
          for (int64_t d = 0; d < D; ++d) worst = std::max(worst, std::abs(row[d] - ref.output.at((t * QH + h) * D + d)));
        }
    }
    BOOST_TEST_INFO(sc.name);
    BOOST_TEST(worst < 1e-6);
  }
}

// An 8-bit cache (case files carry no scales: scale 1) is read as its codes' values by the case and the
// diagnostic reference too (found by fuzz_case: they read the one-byte codes as floats, past the cache).
BOOST_AUTO_TEST_CASE(an_8_bit_cache_reads_as_its_codes) {
  for (rpa_dtype dtype : {RPA_DTYPE_FP8_E4M3, RPA_DTYPE_FP8_E5M2, RPA_DTYPE_INT8}) {
    BOOST_TEST_CONTEXT(st_dtype_name(dtype)) {
      Case c = make_case(preset("mixed"));
      BOOST_REQUIRE(c.combined());
      Array codes = Array::zeros(dtype, c.kv_pages.shape);
      for (int64_t i = 0; i < codes.size(); ++i)
        codes.bytes[static_cast<size_t>(i)] = rpa::float_to_code(dtype, c.kv_pages.at(i) * 8, 1.0f);
      c.kv_pages = codes;
      const int64_t KVH = c.kv_heads(), D = c.head_dim(), ps = c.page_size();
      bool same = true;
      for (int64_t page = 0; page < c.num_pages(); ++page)
        for (int64_t slot = 0; slot < ps; ++slot)
          for (int64_t h = 0; h < KVH; ++h)
            for (int64_t d = 0; d < D; ++d) {
              const int64_t k = ((page * ps + slot) * 2 * KVH + 2 * h) * D + d;
              same = same && c.k(page, slot, h, d) == rpa::code_to_float(dtype, codes.bytes[k]) &&
                     c.v(page, slot, h, d) == rpa::code_to_float(dtype, codes.bytes[k + D]);
            }
      BOOST_TEST(same);
      Candidate candidate = run_case(c, RPA_BACKEND_REFERENCE, RPA_DTYPE_F32, true);
      BOOST_TEST(check(c, candidate).pass);  // the diagnostic reference agrees with the reference
      candidate.output.set(3 * c.q_heads() * D + 1, 9.0f);
      BOOST_TEST(check(c, candidate).wrong_rows == std::vector<int64_t>{3});
    }
  }
}

BOOST_AUTO_TEST_CASE(the_reference_passes_its_own_check_and_a_perturbed_row_fails_at_its_place) {
  const Case c = make_case(preset("mixed"));
  Candidate candidate = run_case(c, RPA_BACKEND_REFERENCE, RPA_DTYPE_F32, true);
  BOOST_TEST(check(c, candidate).pass);
  // Row 7 is query 6 of sequence 1 (rows 1..13), at position 45 - 13 + 6 = 38; head 3 only.
  candidate.output.set((7 * c.q_heads() + 3) * c.head_dim() + 5, 7.0f);
  const Report report = check(c, candidate);
  BOOST_TEST(!report.pass);
  BOOST_TEST(report.wrong_rows == std::vector<int64_t>{7});
  BOOST_REQUIRE(report.runs.size() == 1u);
  BOOST_TEST(report.runs[0].first_place.seq == 1);
  BOOST_TEST(report.runs[0].first_place.query == 6);
  BOOST_TEST(report.runs[0].first_place.position == 38);
  BOOST_TEST(report.runs[0].heads == std::vector<int64_t>{3});
  BOOST_TEST(report.findings[0].hypothesis == "unexplained");
}
