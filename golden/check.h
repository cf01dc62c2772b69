// `rpa check`: a candidate against the reference for its case, row by row, and the diagnosis of the rows
// it gets wrong (which altered rule of variant.h, or which misplacement, reproduces them).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "golden/case.h"

namespace rpa::golden {

struct Tolerance {
  double atol = 0, rtol = 0;
};

// The default tolerance for a candidate output of `dtype` (README and `rpa check --help` state them).
Tolerance default_tolerance(rpa_dtype dtype);

// Where a row sits in the batch.
struct RowPlace {
  int64_t seq = -1;  // -1: no processed sequence covers the row (the contract's zero rows)
  int64_t query = 0, position = 0;
};

struct Finding {
  int64_t row = 0;
  std::string hypothesis;  // a name from hypothesis_names(), or "unexplained"
  std::string detail;      // what exactly, for this row
  std::string group;       // rows of one run with the same group are reported together
};

struct Run {
  int64_t first = 0, last = 0;
  RowPlace first_place, last_place;
  std::vector<int64_t> heads;  // heads with a wrong element in any row of the run
};

struct Report {
  bool pass = true;
  Tolerance tolerance;
  bool lse_checked = false;
  int64_t rows = 0, elements = 0, q_heads = 0;
  double max_abs_error = 0, max_rel_error = 0;
  int64_t wrong_elements = 0;
  std::vector<int64_t> wrong_rows;  // ascending
  std::vector<Run> runs;
  std::vector<Finding> findings;    // one per wrong row, ascending

  nlohmann::json to_json() const;
  std::string text() const;  // what `rpa check` prints
  // One line: "pass" or "fail: N wrong rows (hypothesis: count, ...)".
  std::string summary() const;

 private:
  bool same_detail(size_t first, size_t last) const;
};

// The names of the hypotheses the diagnosis tests, in the order it tests them.
const std::vector<std::string>& hypothesis_names();

// Compares; throws std::invalid_argument when the candidate's shapes do not fit the case or the library
// rejects the case. `tolerance` unset: default_tolerance of the output's dtype.
Report check(const Case& c, const Candidate& candidate, std::optional<Tolerance> tolerance = std::nullopt);

}  // namespace rpa::golden
