// `rpa bench`'s report: the table, the JSON record of a run, goals read from a file, the plot.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "bench/runner.h"

namespace rpa::bench {

// The table on stdout.
void print_table(const Options& options, const Measurements& measurements);

// The run as data: rpa version, CPU and GPU model, UTC timestamp, shape, machine limits, every row.
nlohmann::json to_json(const Options& options, const Measurements& measurements);

// Evaluates the goals of a goals file (format in bench/goals.json) against `run` (to_json's output),
// prints one line per goal and returns them as JSON ({name: {value, goal, met}}). Goals whose rows the
// run lacks are left out. Throws UsageError for an unreadable or malformed file.
nlohmann::json report_goals(const std::string& goals_file, const nlohmann::json& run);

// Draws `json_file` (to_json's output) into `png` with python3-matplotlib; throws on failure.
void plot(const std::string& json_file, const std::string& png);

}  // namespace rpa::bench
