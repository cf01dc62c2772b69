#include "bench/report.h"

#include <sys/stat.h>

#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <sstream>

#include "bench/machine.h"
#include "core/dtype.h"
#include "golden/suite.h"
#include "rpa/rpa.h"

#ifndef RPA_BENCH_PLOT_SCRIPTS
#define RPA_BENCH_PLOT_SCRIPTS ""
#endif
#ifndef RPA_PYTHON
#define RPA_PYTHON "python3"
#endif

namespace rpa::bench {
namespace {

std::string cpu_model() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);)
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(' ', colon + 1));
    }
  return "unknown";
}

// The usable plugins' device summaries, or "" without a GPU.
std::string gpu_model() {
  std::string model;
  for (int32_t i = 0; i < rpa_plugin_report_count(); ++i) {
    rpa_plugin_report report;
    if (rpa_get_plugin_report(i, &report) == RPA_STATUS_OK && report.usable)
      model += (model.empty() ? "" : "; ") + std::string(report.reason);
  }
  return model;
}

std::string utc_timestamp() {
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &utc);
  return text;
}

// Whether every field of `fields` but "metric" equals the row's.
bool matches(const nlohmann::json& row, const nlohmann::json& fields) {
  for (const auto& [key, value] : fields.items())
    if (key != "metric" && (!row.contains(key) || row[key] != value)) return false;
  return true;
}

// The rows of `run` a selector picks, less those matching `except` (when not null).
std::vector<const nlohmann::json*> select_rows(const nlohmann::json& run, const nlohmann::json& selector,
                                               const nlohmann::json& except) {
  std::vector<const nlohmann::json*> rows;
  for (const nlohmann::json& row : run.at("rows"))
    if (matches(row, selector) && (except.is_null() || !matches(row, except))) rows.push_back(&row);
  return rows;
}

}  // namespace

void print_table(const Options& options, const Measurements& m) {
  const Config& c = options.config;
  if (!options.case_file.empty())
    std::printf("rpa bench: the case %s (its own shape and dtypes); median of %d runs\n", options.case_file.c_str(),
                options.repeats);
  else
    std::printf("rpa bench: QH %lld, KVH %lld, D %lld, page %lld, %s queries, %s KV, %s out; median of %d runs\n",
                static_cast<long long>(c.q_heads), static_cast<long long>(c.kv_heads),
                static_cast<long long>(c.head_dim), static_cast<long long>(c.page_size), dtype_name(c.query_dtype),
                dtype_name(c.kv_dtype), dtype_name(c.out_dtype), options.repeats);
  std::printf("machine: %d cores; f32 FMA peak %.1f GFLOP/s on %d threads (Highway %s); read bandwidth measured per\n"
              "workload over a buffer of its KV size (gpu: device-to-device copy, reads + writes)\n",
              m.cores, m.fma_peak * 1e-9, m.machine_threads, machine_target());
  if (m.amx_peak > 0)
    std::printf("AMX bf16 peak %.1f GFLOP/s on %d threads (TDPBF16PS on loaded tiles): the peak of the rows whose\n"
                "prefill products took AMX (path amx); %%peak of path fma rows is of the FMA peak\n",
                m.amx_peak * 1e-9, m.machine_threads);
  else
    std::printf("no AMX in use (absent, refused, or RPA_SIMD_TILES=off): CPU rows take the FMA path\n");
  std::printf("reference: timed on each workload's validation sample; x ref = ratio of attention FLOP/s\n\n");
  std::printf("kernel ms: the kernels of a planned call (rpa_time_attention); plan/call ms: a whole rpa_plan_run,\n"
              "runs queued back to back (rpa_plan_time); 1-call ms (CPU): a whole rpa_attention, planning included;\n"
              "dev-meta ms (gpu): plan/call ms with the metadata in device memory, read on the device at each run;\n"
              "graph ms (NVIDIA): the dev-meta run per call, replayed from a CUDA graph of 32 runs; graph/kern: its\n"
              "ratio to kernel ms\n\n");
  std::printf("%-11s %-9s %-5s %3s %9s %12s %11s %11s %9s %10s %8s %8s %8s %6s %9s %6s %8s %s\n", "workload", "backend", "path",
              "thr", "kernel ms", "plan/call ms", "1-call ms", "dev-meta ms", "graph ms", "graph/kern", "KV MiB", "KV GB/s",
              "BW GB/s", "%BW", "GFLOP/s", "%peak", "x ref", "check (rows, max err)");
  for (const Row& r : m.rows) {
    char peak[16] = "-";
    if (r.peak > 0) std::snprintf(peak, sizeof peak, "%.1f", 100 * r.flop_rate() / r.peak);
    char one_call[16] = "-";
    if (r.one_call_ms > 0) std::snprintf(one_call, sizeof one_call, "%.3f", r.one_call_ms);
    char device_metadata[16] = "-";
    if (r.device_metadata_ms > 0) std::snprintf(device_metadata, sizeof device_metadata, "%.3f", r.device_metadata_ms);
    char graph[16] = "-", graph_ratio[16] = "-";
    if (r.graph_ms > 0) {
      std::snprintf(graph, sizeof graph, "%.3f", r.graph_ms);
      std::snprintf(graph_ratio, sizeof graph_ratio, "%.3f", r.graph_ms / r.ms);
    }
    std::printf("%-11s %-9s %-5s %3d %9.3f %12.3f %11s %11s %9s %10s %8.1f %8.2f %8.2f %6.1f %9.1f %6s %8.0f %s %lld/%lld, %.2g\n",
                r.workload.c_str(), r.backend.c_str(), r.path.empty() ? "-" : r.path.c_str(), r.threads, r.ms, r.planned_ms,
                one_call, device_metadata, graph, graph_ratio, r.kv_bytes / (1 << 20), r.kv_rate() * 1e-9, r.bandwidth * 1e-9,
                100 * r.kv_rate() / r.bandwidth, r.flop_rate() * 1e-9, peak, r.speedup(), r.valid ? "ok" : "FAIL",
                static_cast<long long>(r.sample_rows), static_cast<long long>(r.total_rows), r.max_error);
  }
  std::printf("\nvalidation against the reference: %s\n", m.all_valid() ? "all ok" : "FAILED");
}

nlohmann::json to_json(const Options& options, const Measurements& m) {
  const Config& c = options.config;
  nlohmann::json j;
  j["rpa_version"] = golden::library_version();
  j["timestamp"] = utc_timestamp();
  j["cpu_model"] = cpu_model();
  j["gpu_model"] = gpu_model();
  if (!options.case_file.empty()) j["case"] = options.case_file;
  else j["shape"] = {{"q_heads", c.q_heads}, {"kv_heads", c.kv_heads}, {"head_dim", c.head_dim},
                {"page_size", c.page_size}, {"query_dtype", dtype_name(c.query_dtype)},
                {"kv_dtype", dtype_name(c.kv_dtype)}, {"out_dtype", dtype_name(c.out_dtype)}};
  j["machine"] = {{"cores", m.cores}, {"threads", m.machine_threads}, {"fma_peak_flops", m.fma_peak},
                  {"amx_peak_flops", m.amx_peak},
                  {"highway_target", machine_target()}};
  j["repeats"] = options.repeats;
  j["rows"] = nlohmann::json::array();
  for (const Row& r : m.rows)
    j["rows"].push_back({{"workload", r.workload}, {"description", r.what}, {"backend", r.backend},
                         {"threads", r.threads}, {"median_ms", r.ms},
                         {"planned_call_ms", r.planned_ms}, {"one_call_ms", r.one_call_ms},
                         {"device_metadata_call_ms", r.device_metadata_ms}, {"graph_replay_call_ms", r.graph_ms},
                         {"kv_bytes", r.kv_bytes},
                         {"kv_bytes_per_s", r.kv_rate()}, {"read_bandwidth", r.bandwidth},
                         {"bandwidth_share", r.kv_rate() / r.bandwidth}, {"flops", r.flops},
                         {"flops_per_s", r.flop_rate()}, {"path", r.path},
                         {"peak_share", r.peak > 0 ? r.flop_rate() / r.peak : 0.0},
                         {"reference_flops_per_s", r.reference_flops_rate}, {"speedup_vs_reference", r.speedup()},
                         {"validated_rows", r.sample_rows}, {"total_rows", r.total_rows},
                         {"max_abs_error", r.max_error}, {"valid", r.valid}});
  j["all_valid"] = m.all_valid();
  return j;
}

nlohmann::json report_goals(const std::string& goals_file, const nlohmann::json& run) {
  std::ifstream in(goals_file);
  if (!in) throw UsageError("cannot read the goals file " + goals_file);
  nlohmann::json goals;
  try {
    goals = nlohmann::json::parse(in).at("goals");
  } catch (const nlohmann::json::exception& e) {
    throw UsageError(goals_file + ": " + e.what());
  }
  nlohmann::json results = nlohmann::json::object();
  std::printf("\ngoals (%s):\n", goals_file.c_str());
  for (const nlohmann::json& goal : goals) {
    try {
      const std::string name = goal.at("name"), metric = goal.at("select").at("metric");
      // value: the metric of the selected row (the lowest over several), optionally divided by another row's.
      auto value_of = [&](const nlohmann::json& selector) {
        double value = INFINITY;
        for (const nlohmann::json* row : select_rows(run, selector, goal.value("except", nlohmann::json()))) value = std::min(value, row->at(metric).get<double>());
        return value;
      };
      double value = value_of(goal["select"]);
      if (goal.contains("divided_by")) {
        nlohmann::json other = goal["select"];
        other.update(goal["divided_by"]);
        value /= value_of(other);
      }
      if (!std::isfinite(value)) continue;  // the run has no such rows
      const double scale = goal.value("scale", 1.0);
      const std::string unit = goal.value("unit", "");
      const bool at_least = goal.contains("at_least");
      const double target = at_least ? goal["at_least"].get<double>() : goal.at("at_most").get<double>();
      const bool met = at_least ? value >= target : value <= target;
      std::printf("  %-40s %8.2f%s (goal %s %.2f%s) %s\n", name.c_str(), value * scale, unit.c_str(),
                  at_least ? ">=" : "<=", target * scale, unit.c_str(), met ? "met" : "MISSED");
      results[name] = {{"value", value}, {"goal", target}, {"met", met}};
    } catch (const nlohmann::json::exception& e) {
      throw UsageError(goals_file + ": a goal: " + e.what());
    }
  }
  return results;
}

void plot(const std::string& json_file, const std::string& png) {
  // The installed copy first, then the source tree's (a build that is run uninstalled).
  std::string script;
  std::istringstream candidates(RPA_BENCH_PLOT_SCRIPTS);
  for (std::string path; std::getline(candidates, path, ':');) {
    struct stat info;
    if (script.empty() && !path.empty() && stat(path.c_str(), &info) == 0) script = path;
  }
  if (script.empty()) throw std::runtime_error("bench_plot.py not found (looked in " RPA_BENCH_PLOT_SCRIPTS ")");
  auto quoted = [](const std::string& s) {
    std::string q = "'";
    for (char ch : s) q += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
    return q + "'";
  };
  const std::string command = quoted(RPA_PYTHON) + " " + quoted(script) + " " + quoted(json_file) + " " + quoted(png);
  if (std::system(command.c_str()) != 0) throw std::runtime_error("plotting failed: " + command);
}

}  // namespace rpa::bench
