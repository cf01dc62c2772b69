// The `rpa` command: `rpa info` describes the library, its backends and plugins; `rpa bench` runs the
// benchmark-and-validate main job (bench/); make-case, run, check and suite are the golden-reference
// toolkit (tools/case_commands.cpp over golden/).
#include <CLI/CLI.hpp>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "bench/bench.h"
#include "golden/suite.h"
#include "tools/case_commands.h"
#include "rpa/rpa.h"
#include "simd/tiles.h"

namespace {

nlohmann::json describe() {
  nlohmann::json info;
  info["version"] = rpa::golden::library_version();
  for (rpa_backend backend : {RPA_BACKEND_REFERENCE, RPA_BACKEND_SIMD, RPA_BACKEND_GPU, RPA_BACKEND_AUTO}) {
    nlohmann::json entry;
    entry["available"] = rpa_backend_available(backend) != 0;
    rpa_context_options options;
    rpa_context_options_init(&options);
    options.backend = backend;
    rpa_context* context = nullptr;
    if (rpa_context_create(&options, &context) == RPA_STATUS_OK) {
      rpa_backend resolved;
      int32_t threads = 0;
      rpa_context_get_backend(context, &resolved);
      rpa_context_get_num_threads(context, &threads);
      entry["runs"] = rpa_backend_string(resolved);
      entry["threads"] = threads;
      rpa_context_destroy(context);
    } else {
      entry["why_not"] = rpa_last_error();
    }
    info["backends"][rpa_backend_string(backend)] = entry;
  }
  // Prefill products of the simd backend (16-bit queries and KV): AMX tiles, their scalar twin, or FMA.
  info["simd_tiles"] = {{"path", rpa::simd::tile_path_name()}, {"reason", rpa::simd::tile_path_reason()}};
  info["plugins"] = nlohmann::json::array();
  for (int32_t i = 0; i < rpa_plugin_report_count(); ++i) {
    rpa_plugin_report report;
    if (rpa_get_plugin_report(i, &report) != RPA_STATUS_OK) continue;
    info["plugins"].push_back({{"path", report.path}, {"name", report.name}, {"usable", report.usable != 0},
                               {"devices", report.device_count}, {"reason", report.reason}});
  }
  return info;
}

void print_info(const nlohmann::json& info) {
  std::printf("rpa %s\n\nbackends:\n", info["version"].get<std::string>().c_str());
  for (const auto& [name, entry] : info["backends"].items()) {
    if (entry.contains("runs"))
      std::printf("  %-10s available, runs %s on %d thread(s)\n", name.c_str(),
                  entry["runs"].get<std::string>().c_str(), entry["threads"].get<int>());
    else
      std::printf("  %-10s unavailable: %s\n", name.c_str(), entry["why_not"].get<std::string>().c_str());
  }
  const std::string tiles_reason = info["simd_tiles"]["reason"].get<std::string>();
  std::printf("\nsimd prefill tiles: %s%s%s\n", info["simd_tiles"]["path"].get<std::string>().c_str(),
              tiles_reason.empty() ? "" : " (", tiles_reason.empty() ? "" : (tiles_reason + ")").c_str());
  std::printf("\nplugins:%s\n", info["plugins"].empty() ? " none found" : "");
  for (const auto& plugin : info["plugins"])
    std::printf("  %s (%s): %s, %s\n", plugin["path"].get<std::string>().c_str(),
                plugin["name"].get<std::string>().c_str(), plugin["usable"].get<bool>() ? "usable" : "rejected",
                plugin["reason"].get<std::string>().c_str());
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"rpa: ragged paged attention over a paged KV cache"};
  app.require_subcommand(1);
  bool as_json = false;
  CLI::App* info = app.add_subcommand("info", "Show the version, the backends and the GPU plugins");
  info->add_flag("--json", as_json, "Print JSON instead of text");
  info->callback([&] {
    const nlohmann::json description = describe();
    // Plugin paths and reasons are bytes from the file system and the plugins: invalid UTF-8 becomes U+FFFD.
    if (as_json) std::printf("%s\n", description.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    else print_info(description);
  });
  rpa_bench_register(app);
  rpa_case_commands_register(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // Commands report their own failures (RuntimeError carries their status); a command line CLI11
    // rejects is bad input: 2.
    const int status = app.exit(e);
    return dynamic_cast<const CLI::RuntimeError*>(&e) || status == 0 ? status : 2;
  }
  return 0;
}
