// `rpa bench`: the command line (workloads.cpp says what is timed, runner.cpp times it, report.cpp shows it).
#include "bench/bench.h"

#include <cstdio>
#include <fstream>
#include <memory>

#include "bench/report.h"
#include "bench/runner.h"

namespace {

struct CliOptions {
  rpa::bench::Options run;
  std::string json, goals, plot;
  std::string query_dtype = "bf16", kv_dtype = "bf16", out_dtype = "bf16";
};

rpa_dtype parse_dtype(const std::string& name) {
  if (name == "f32") return RPA_DTYPE_F32;
  if (name == "f16") return RPA_DTYPE_F16;
  if (name == "fp8_e4m3") return RPA_DTYPE_FP8_E4M3;
  if (name == "fp8_e5m2") return RPA_DTYPE_FP8_E5M2;
  if (name == "int8") return RPA_DTYPE_INT8;
  return RPA_DTYPE_BF16;
}

void run(CliOptions& cli) {
  rpa::bench::Options& options = cli.run;
  options.config.query_dtype = parse_dtype(cli.query_dtype);
  options.config.kv_dtype = parse_dtype(cli.kv_dtype);
  options.config.out_dtype = parse_dtype(cli.out_dtype);
  const rpa::bench::Measurements measurements = rpa::bench::run(options);
  rpa::bench::print_table(options, measurements);
  nlohmann::json record = rpa::bench::to_json(options, measurements);
  if (!cli.goals.empty()) record["goals"] = rpa::bench::report_goals(cli.goals, record);
  std::string json_file = cli.json;
  if (json_file.empty() && !cli.plot.empty()) json_file = cli.plot + ".json";  // the plot reads the JSON
  if (!json_file.empty()) {
    std::ofstream out(json_file);
    out << record.dump(2) << "\n";
    if (!out) throw std::runtime_error("cannot write " + json_file);
  }
  if (!cli.plot.empty()) rpa::bench::plot(json_file, cli.plot);
  if (!measurements.all_valid()) throw std::runtime_error("a backend disagrees with the reference");
}

}  // namespace

void rpa_bench_register(CLI::App& app) {
  auto cli = std::make_shared<CliOptions>();
  rpa::bench::Options& options = cli->run;
  CLI::App* bench = app.add_subcommand("bench", "Validate every available backend against the reference, then time "
                                                "the standard workloads against this machine's limits. Exit status: "
                                                "0 done, 1 a backend disagrees with the reference or a run failed, 2 a "
                                                "bad request (unknown workload, unavailable backend, bad option)");
  bench->add_option("--workloads", options.workloads, "Any of W1 W2 W3 context threads")->capture_default_str();
  bench->add_option("--backends", options.backends, "Backends to time, simd and/or gpu (default: every available one)");
  bench->add_option("--contexts", options.contexts, "Context lengths of the decode sweep")->capture_default_str();
  bench->add_option("--repeats", options.repeats, "Timed runs per figure (the median is shown)")
      ->check(CLI::PositiveNumber)->capture_default_str();
  bench->add_option("--threads", options.threads, "CPU threads (0 = all cores)")->check(CLI::NonNegativeNumber);
  bench->add_option("--q-heads", options.config.q_heads, "Query heads")->check(CLI::PositiveNumber)->capture_default_str();
  bench->add_option("--kv-heads", options.config.kv_heads, "KV heads (divides --q-heads)")
      ->check(CLI::PositiveNumber)->capture_default_str();
  bench->add_option("--head-dim", options.config.head_dim, "Head dimension")->check(CLI::PositiveNumber)->capture_default_str();
  bench->add_option("--page-size", options.config.page_size, "Tokens per KV page")
      ->check(CLI::PositiveNumber)->capture_default_str();
  const auto dtypes = CLI::IsMember({"f32", "f16", "bf16"});
  bench->add_option("--q-dtype", cli->query_dtype, "Queries' dtype")->check(dtypes)->capture_default_str();
  bench->add_option("--kv-dtype", cli->kv_dtype, "KV cache's dtype (8-bit: one per-tensor scale)")
      ->check(CLI::IsMember({"f32", "f16", "bf16", "fp8_e4m3", "fp8_e5m2", "int8"}))
      ->capture_default_str();
  bench->add_option("--out-dtype", cli->out_dtype, "Output's dtype")->check(dtypes)->capture_default_str();
  bench->add_option("--case", options.case_file, "Time this case file (rpa make-case) on each backend instead of the "
                                                 "workloads, checked in full against the reference");
  bench->add_option("--json", cli->json, "Also write the run as JSON (rpa version, CPU/GPU model, timestamp, rows)");
  bench->add_option("--goals", cli->goals, "Judge the run against the goals in this file (the project's own: "
                                           "bench/goals.json)");
  bench->add_option("--plot", cli->plot, "Draw throughput against context length per backend into this PNG "
                                         "(python3-matplotlib; needs the context workload)");
  bench->callback([cli] {
    try {
      run(*cli);
    } catch (const rpa::bench::UsageError& error) {
      std::fprintf(stderr, "rpa bench: %s\n", error.what());
      throw CLI::RuntimeError(2);
    } catch (const std::exception& error) {
      std::fprintf(stderr, "rpa bench: %s\n", error.what());
      throw CLI::RuntimeError(1);
    }
  });
}
