// The GPU plugin loader: the core's record of every plugin it tried to load (rpa_get_plugin_report,
// `rpa info`) and the plugin that serves the gpu backend (plugins/gpu_backend.cpp).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "plugins/plugin_abi.h"

namespace rpa {

struct PluginReport {
  std::string path;
  std::string name;
  bool usable = false;
  int device_count = 0;
  std::string reason;
};

struct UsablePlugin {
  const rpa_plugin_api* api;
  int32_t score;
  int32_t device_count;
};

// Loads the plugins on first call (thread-safe) and never unloads them.
const std::vector<PluginReport>& plugin_reports();

// The usable plugin with the highest score, or nullptr; then no_usable_plugin_reason() says why.
const UsablePlugin* best_plugin();
std::string no_usable_plugin_reason();

// The plugin's message for the calling thread's last failure inside it.
std::string last_error_of(const rpa_plugin_api* api);

}  // namespace rpa
