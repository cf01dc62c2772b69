// The core's record of every plugin it tried to load (rpa_get_plugin_report, `rpa info`).
#pragma once

#include <string>
#include <vector>

namespace rpa {

struct PluginReport {
  std::string path;
  std::string name;
  bool usable = false;
  int device_count = 0;
  std::string reason;
};

// Loads the plugins on first call (thread-safe) and never unloads them.
const std::vector<PluginReport>& plugin_reports();

}  // namespace rpa
