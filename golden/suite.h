// The conformance suite: a fixed, versioned list of cases, each named after the bug class or feature it
// probes. `rpa suite make DIR` writes them with a manifest; a kernel author's program writes
// NAME.out.safetensors beside each; `rpa suite check DIR` checks them all.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "golden/check.h"
#include "golden/generate.h"

namespace rpa::golden {

constexpr int kSuiteVersion = 1;

// The loaded librpa's version (rpa_get_version), "MAJOR.MINOR.PATCH": what manifests, reports and
// `rpa info` record, which may differ from the headers' RPA_VERSION_STRING.
std::string library_version();

struct SuiteCase {
  std::string name, probes;
  Spec spec;
};

const std::vector<SuiteCase>& suite_cases();

// Writes every case and manifest.json into dir (created if missing).
void make_suite(const std::string& dir);

struct SuiteResult {
  std::string name;
  bool pass = false;
  std::string line;  // "pass", "missing output", "bad output: ...", or the check's summary
  std::optional<Report> report;
};

// Checks every case of dir's manifest against NAME.out.safetensors. Throws std::invalid_argument for a
// missing or malformed manifest (or a case file that is not one) and FormatError for a case file.
std::vector<SuiteResult> check_suite(const std::string& dir, std::optional<Tolerance> tolerance);

nlohmann::json suite_json(const std::vector<SuiteResult>& results);

}  // namespace rpa::golden
