#include "golden/suite.h"

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace rpa::golden {
namespace {

SuiteCase make(const std::string& name, const std::string& probes, std::vector<int32_t> q_lens,
               std::vector<int32_t> context_lens, void (*tweak)(Spec&) = nullptr) {
  SuiteCase c{name, probes, Spec{}};
  c.spec.q_lens = std::move(q_lens);
  c.spec.context_lens = std::move(context_lens);
  if (tweak) tweak(c.spec);
  return c;
}

std::vector<SuiteCase> build() {
  std::vector<SuiteCase> cases{
      make("decode_page_boundaries", "decode with contexts at and around page boundaries (page 16)", {1, 1, 1, 1, 1, 1},
           {1, 15, 16, 17, 32, 33}),
      make("prefill", "one whole prompt of 37 tokens (not a multiple of 8)", {37}, {37}),
      make("chunked_prefill", "prefill chunks after cached tokens", {13, 20}, {45, 70}),
      make("mixed_batch", "decodes and prefill chunks in one batch", {1, 13, 1, 30}, {90, 45, 33, 130}),
      make("q_len_zero", "sequences with no new tokens between others", {3, 0, 2, 0}, {10, 7, 20, 1}),
      make("padding_tokens", "rows after the last sequence must be 0", {4, 2}, {9, 30},
           [](Spec& s) { s.padding_tokens = 5; }),
      make("padding_seqs", "metadata sequences beyond num_seqs claiming the padding rows must not be computed", {4, 2},
           {9, 30}, [](Spec& s) {
             s.padding_tokens = 6;
             s.padding_seqs = 2;
           }),
      make("tokens_not_multiple_of_8", "21 tokens in sequences of 3, 9, 7 and 2", {3, 9, 7, 2}, {20, 9, 30, 50}),
      make("query_block_end", "the last query block runs past the end of the 11-token array (seed bug 1)", {6, 5},
           {30, 5}),
      make("wide_table_70", "a block table of 70 pages (more than 64, not a multiple; seed bug 2)", {1, 3}, {139, 100},
           [](Spec& s) {
             s.page_size = 2;
             s.table_width = 70;
           }),
      make("wide_table_130", "a block table of 130 pages", {2, 1}, {259, 10}, [](Spec& s) {
        s.page_size = 2;
        s.table_width = 130;
      }),
      make("long_window", "a window that leaves the first 64 pages invisible (seed bug 3)", {4, 1}, {300, 280},
           [](Spec& s) {
             s.page_size = 2;
             s.sliding_window = 64;
           }),
      make("window_small", "a window of 5 over prefill and decode", {12, 1}, {20, 40}, [](Spec& s) { s.sliding_window = 5; }),
      make("window_page_aligned", "a window of one page (16)", {1, 20}, {64, 50}, [](Spec& s) { s.sliding_window = 16; }),
      make("sinks_shared", "one sink shared by all heads [1, 1]", {1, 9}, {40, 30}, [](Spec& s) { s.sink_heads = 1; }),
      make("sinks_per_kv_head", "two sinks per kv head [KVH, 2]", {1, 9}, {40, 30}, [](Spec& s) {
        s.sink_heads = 2;
        s.sinks_per_head = 2;
      }),
      make("sinks_per_q_head", "one sink per q head [QH, 1]", {1, 9}, {40, 30}, [](Spec& s) { s.sink_heads = 8; }),
      make("sinks_minus_inf", "sinks of -inf next to finite ones [QH, 2]", {1, 9}, {40, 30}, [](Spec& s) {
        s.sink_heads = 8;
        s.sinks_per_head = 2;
        s.minus_inf_sink = true;
      }),
      make("soft_cap", "logits_soft_cap 5 with large logits", {1, 9}, {40, 30}, [](Spec& s) {
        s.logits_soft_cap = 5;
        s.query_scale = 4;
      }),
      make("softmax_scale", "an explicit softmax_scale of 0.3", {1, 9}, {40, 30}, [](Spec& s) { s.softmax_scale = 0.3; }),
      make("gqa_1", "multi-head attention (QH = KVH = 4)", {1, 7}, {33, 20}, [](Spec& s) {
        s.q_heads = 4;
        s.kv_heads = 4;
      }),
      make("gqa_2", "2 q heads per kv head", {1, 7}, {33, 20}, [](Spec& s) {
        s.q_heads = 4;
        s.kv_heads = 2;
      }),
      make("gqa_4", "4 q heads per kv head", {1, 7}, {33, 20}),
      make("gqa_8", "8 q heads on one kv head (MQA)", {1, 7}, {33, 20}, [](Spec& s) { s.kv_heads = 1; }),
      make("head_dim_80", "head_dim 80 (not a power of 2)", {1, 7}, {33, 20}, [](Spec& s) { s.head_dim = 80; }),
      make("head_dim_24", "head_dim 24", {1, 7}, {33, 20}, [](Spec& s) { s.head_dim = 24; }),
      make("nan_unused_slots", "NaN in unused pages and in the slots past each context (seed bug 5)", {1, 9, 1},
           {17, 30, 40}, [](Spec& s) { s.nan_unused = true; }),
      make("stale_block_table", "block-table entries a sequence does not need point at other sequences' pages", {1, 5},
           {20, 37}, [](Spec& s) {
             s.stale_entries = true;
             s.table_width = 6;
           }),
      make("f16", "f16 queries and KV", {1, 9}, {40, 30}, [](Spec& s) {
        s.query_dtype = RPA_DTYPE_F16;
        s.kv_dtype = RPA_DTYPE_F16;
      }),
      make("bf16", "bf16 queries and KV", {1, 9}, {40, 30}, [](Spec& s) {
        s.query_dtype = RPA_DTYPE_BF16;
        s.kv_dtype = RPA_DTYPE_BF16;
      }),
      make("separate_kv", "k_cache and v_cache instead of the combined layout", {1, 9}, {40, 30},
           [](Spec& s) { s.separate_kv = true; }),
      make("page_size_1", "pages of one token", {1, 6}, {25, 12}, [](Spec& s) { s.page_size = 1; }),
  };
  for (size_t i = 0; i < cases.size(); ++i) cases[i].spec.seed = 1000 + i;
  return cases;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::invalid_argument("cannot read " + path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace

const std::vector<SuiteCase>& suite_cases() {
  static const std::vector<SuiteCase> cases = build();
  return cases;
}

std::string library_version() {
  const int32_t v = rpa_get_version();
  return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
}

void make_suite(const std::string& dir) {
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error) throw std::runtime_error("cannot create " + dir + ": " + error.message());
  nlohmann::json manifest = {
      {"suite", "rpa-conformance"},
      {"version", kSuiteVersion},
      {"rpa_version", library_version()},
      {"about", "Each case NAME.safetensors holds the inputs of one ragged paged attention call (rpa README, "
                "'Case files'); write your kernel's output as NAME.out.safetensors (tensor 'output' [T, QH, D], "
                "optionally 'lse' [T, QH] F32) and run `rpa suite check DIR`."},
      {"cases", nlohmann::json::array()}};
  for (const SuiteCase& sc : suite_cases()) {
    Case c = make_case(sc.spec);
    c.notes["suite_case"] = sc.name;
    c.notes["probes"] = sc.probes;
    save_case(dir + "/" + sc.name + ".safetensors", c);
    manifest["cases"].push_back({{"name", sc.name}, {"case", sc.name + ".safetensors"},
                                 {"output", sc.name + ".out.safetensors"}, {"probes", sc.probes}});
  }
  std::ofstream out(dir + "/manifest.json");
  out << manifest.dump(2) << "\n";
  if (!out) throw std::runtime_error("cannot write " + dir + "/manifest.json");
}

std::vector<SuiteResult> check_suite(const std::string& dir, std::optional<Tolerance> tolerance) {
  nlohmann::json manifest;
  try {
    manifest = nlohmann::json::parse(read_text(dir + "/manifest.json"));
  } catch (const nlohmann::json::exception& e) {
    throw std::invalid_argument(dir + "/manifest.json: " + e.what());
  }
  if (!manifest.is_object() || manifest.value("suite", "") != "rpa-conformance" || !manifest.contains("version"))
    throw std::invalid_argument(dir + "/manifest.json: not an rpa conformance suite manifest");
  if (manifest["version"] != kSuiteVersion)
    throw std::invalid_argument(dir + "/manifest.json: suite version " + manifest["version"].dump() +
                                ", this rpa checks version " + std::to_string(kSuiteVersion) +
                                " (remake the suite with `rpa suite make`)");
  std::vector<SuiteResult> results;
  for (const nlohmann::json& entry : manifest.at("cases")) {
    SuiteResult result;
    try {
      result.name = entry.at("name").get<std::string>();
      const Case c = load_case(dir + "/" + entry.at("case").get<std::string>());
      const std::string output = dir + "/" + entry.at("output").get<std::string>();
      struct stat info;
      if (stat(output.c_str(), &info) != 0) {
        result.line = "missing output " + entry.at("output").get<std::string>();
      } else {
        try {
          result.report = check(c, load_candidate(output), tolerance);
          result.pass = result.report->pass;
          result.line = result.report->summary();
        } catch (const std::exception& e) {  // the output file or its shapes: this case fails, the others go on
          result.line = std::string("bad output: ") + e.what();
        }
      }
    } catch (const nlohmann::json::exception& e) {
      throw std::invalid_argument(dir + "/manifest.json: " + e.what());
    }
    results.push_back(std::move(result));
  }
  return results;
}

nlohmann::json suite_json(const std::vector<SuiteResult>& results) {
  nlohmann::json j;
  j["version"] = kSuiteVersion;
  j["cases"] = nlohmann::json::array();
  int64_t passed = 0;
  for (const SuiteResult& r : results) {
    nlohmann::json entry = {{"name", r.name}, {"pass", r.pass}, {"summary", r.line}};
    if (r.report) entry["report"] = r.report->to_json();
    j["cases"].push_back(entry);
    passed += r.pass;
  }
  j["passed"] = passed;
  j["failed"] = static_cast<int64_t>(results.size()) - passed;
  j["pass"] = passed == static_cast<int64_t>(results.size());
  return j;
}

}  // namespace rpa::golden
