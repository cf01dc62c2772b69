// Placeholder until the plugin loader lands (issue 4): no plugin is searched, gpu is unavailable.
#include "core/backend.h"
#include "core/error.h"
#include "core/plugins.h"

namespace rpa {

bool gpu_backend_available() { return false; }

std::unique_ptr<Backend> make_gpu_backend(int, int) {
  fail(RPA_STATUS_UNAVAILABLE, "no GPU plugin found: the plugin loader is not built into this librpa yet");
}

const std::vector<PluginReport>& plugin_reports() {
  static const std::vector<PluginReport> none;
  return none;
}

}  // namespace rpa
