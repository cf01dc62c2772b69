// The GPU plugin loader (plugins/plugin_abi.h); the gpu backend that forwards to a plugin is plugins/gpu_backend.cpp.
//
// Plugins are files named librpa_*.so, searched in the directories of RPA_PLUGIN_PATH (colon-separated),
// then the installed plugin directory (RPA_PLUGIN_DIR), then the directory holding librpa itself. The
// first file of a given name wins. Each is opened with dlopen(RTLD_NOW | RTLD_LOCAL), so two plugins may
// carry the same symbols, and never closed: a GPU runtime may keep threads and atexit handlers inside it.
#include <dirent.h>
#include <dlfcn.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdlib>
#include <cstdio>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/plugins.h"
#include "plugins/plugin_abi.h"

#ifndef RPA_PLUGIN_DIR
#error "core/meson.build passes RPA_PLUGIN_DIR, the installed plugin directory"
#endif

namespace rpa {

std::string last_error_of(const rpa_plugin_api* api) {
  const char* text = api->last_error();
  return text && *text ? text : "(the plugin gave no message)";
}

namespace {

struct Registry {
  std::vector<std::string> searched;  // directories, in search order
  std::vector<PluginReport> reports;
  std::vector<UsablePlugin> usable;  // best score first
};

std::string directory_of_librpa() {
  Dl_info info{};
  if (!dladdr(reinterpret_cast<void*>(&plugin_reports), &info) || !info.dli_fname) return "";
  const std::string path = info.dli_fname;
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

std::vector<std::string> search_directories() {
  std::vector<std::string> directories;
  if (const char* env = std::getenv("RPA_PLUGIN_PATH")) {
    const std::string list = env;
    size_t begin = 0;
    while (begin <= list.size()) {
      const size_t end = std::min(list.find(':', begin), list.size());
      if (end > begin) directories.push_back(list.substr(begin, end - begin));
      begin = end + 1;
    }
  }
  directories.push_back(RPA_PLUGIN_DIR);
  directories.push_back(directory_of_librpa());
  return directories;
}

bool is_plugin_file_name(const std::string& name) {
  const std::string prefix = "librpa_", suffix = ".so";
  return name.size() > prefix.size() + suffix.size() && name.compare(0, prefix.size(), prefix) == 0 &&
         name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::vector<std::string> plugin_files_in(const std::string& directory) {
  std::vector<std::string> names;
  if (DIR* dir = opendir(directory.c_str())) {
    while (const dirent* entry = readdir(dir))
      if (is_plugin_file_name(entry->d_name)) names.push_back(entry->d_name);
    closedir(dir);
  }
  std::sort(names.begin(), names.end());
  return names;
}

// dlopen of a FIFO or device file blocks or reads forever: only regular files (links followed) open.
bool is_regular_file(const std::string& path) {
  struct stat status {};
  return stat(path.c_str(), &status) == 0 && S_ISREG(status.st_mode);
}

// More devices than any machine has means a broken plugin; describing INT32_MAX of them would hang.
constexpr int32_t kMaxDevices = 1024;

// Opens one plugin file and fills its report; returns the plugin when it has a device.
bool load_plugin(const std::string& path, PluginReport& report, UsablePlugin& usable) {
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    const char* why = dlerror();
    report.reason = std::string("cannot be loaded (its GPU runtime may be missing): ") + (why ? why : "dlopen failed");
    return false;
  }
  const auto entry = reinterpret_cast<rpa_plugin_entry_fn>(dlsym(handle, RPA_PLUGIN_ENTRY_SYMBOL));
  if (!entry) {
    report.reason = "not an rpa plugin: it exports no " RPA_PLUGIN_ENTRY_SYMBOL;
    return false;
  }
  const rpa_plugin_api* api = entry();
  if (!api) {
    report.reason = "wrong ABI: " RPA_PLUGIN_ENTRY_SYMBOL " returned no table";
    return false;
  }
  if (api->abi_version != RPA_PLUGIN_ABI_VERSION) {
    report.reason = "wrong ABI: the plugin has ABI version " + std::to_string(api->abi_version) +
                    ", this librpa needs " + std::to_string(RPA_PLUGIN_ABI_VERSION);
    return false;
  }
  if (api->struct_size < RPA_PLUGIN_API_REQUIRED_SIZE) {
    report.reason = "wrong ABI: the plugin's table has " + std::to_string(api->struct_size) +
                    " bytes, this librpa needs at least " + std::to_string(RPA_PLUGIN_API_REQUIRED_SIZE);
    return false;
  }
  const bool complete = api->name && api->last_error && api->init && api->device_count && api->describe_device &&
                        api->create && api->destroy && api->run && api->plan_create && api->plan_run && api->plan_time &&
                        api->plan_destroy && api->supports && api->merge_states && api->device_alloc &&
                        api->device_free && api->device_copy && api->write_kv;
  if (!complete) {
    report.reason = "wrong ABI: the plugin's table has empty entries";
    return false;
  }
  report.name = api->name;
  int32_t score = 1;
  if (const auto probe = reinterpret_cast<rpa_plugin_score_fn>(dlsym(handle, RPA_PLUGIN_SCORE_SYMBOL))) {
    score = probe();
    if (score <= 0) {
      report.reason = "no device: " + last_error_of(api);
      return false;
    }
  }
  if (const rpa_status status = api->init(); status != RPA_STATUS_OK) {
    report.reason = std::string("driver error: initialisation failed (") + rpa_status_string(status) +
                    "): " + last_error_of(api);
    return false;
  }
  int32_t count = 0;
  if (const rpa_status status = api->device_count(&count); status != RPA_STATUS_OK) {
    report.reason = std::string("driver error: counting devices failed (") + rpa_status_string(status) +
                    "): " + last_error_of(api);
    return false;
  }
  if (count <= 0) {
    report.reason = "no device: the " + report.name + " runtime reports no device";
    return false;
  }
  if (count > kMaxDevices) {
    report.reason = "wrong ABI: the plugin reports " + std::to_string(count) + " devices, more than the " +
                    std::to_string(kMaxDevices) + " rpa accepts";
    return false;
  }
  report.usable = true;
  report.device_count = count;
  for (int32_t i = 0; i < count; ++i) {
    char text[256] = "";
    if (api->describe_device(i, text, sizeof text) != RPA_STATUS_OK) std::snprintf(text, sizeof text, "device %d", i);
    text[sizeof text - 1] = '\0';
    report.reason += (i ? "; " : "") + std::to_string(i) + ": " + text;
  }
  usable = UsablePlugin{api, score, count};
  return true;
}

Registry load_all() {
  Registry registry;
  registry.searched = search_directories();
  std::set<std::string> seen_names;
  for (const std::string& directory : registry.searched) {
    for (const std::string& name : plugin_files_in(directory)) {
      PluginReport report;
      report.path = directory + "/" + name;
      if (!is_regular_file(report.path)) {  // and it does not hide a plugin of its name later in the order
        report.reason = "skipped: not a regular file";
        registry.reports.push_back(report);
        continue;
      }
      if (!seen_names.insert(name).second) {
        report.reason = "skipped: a plugin of the same file name was found earlier in the search order";
        registry.reports.push_back(report);
        continue;
      }
      UsablePlugin usable{};
      if (load_plugin(report.path, report, usable)) registry.usable.push_back(usable);
      registry.reports.push_back(report);
    }
  }
  std::stable_sort(registry.usable.begin(), registry.usable.end(),
                   [](const UsablePlugin& a, const UsablePlugin& b) { return a.score > b.score; });
  return registry;
}

// Set while this thread loads the plugins: a plugin that calls librpa from its constructor or init
// would re-enter the registry's initialisation, which aborts (or deadlocks) the process.
thread_local bool loading_plugins = false;

const Registry& registry() {
  if (loading_plugins)
    fail(RPA_STATUS_UNAVAILABLE, "a GPU plugin called librpa while the plugins were being loaded");
  static const Registry loaded = [] {  // C++11 guarantees one thread loads, the others wait
    struct Loading {
      Loading() { loading_plugins = true; }
      ~Loading() { loading_plugins = false; }
    } loading;
    return load_all();
  }();
  return loaded;
}

// Why the gpu backend cannot run: no plugin at all, or each plugin's own reason.
std::string unavailable_reason(const Registry& registry) {
  if (registry.reports.empty()) {
    std::string message = "no GPU plugin found (searched for librpa_*.so in";
    for (const std::string& directory : registry.searched) message += " '" + directory + "'";
    return message + "; RPA_PLUGIN_PATH adds directories)";
  }
  std::string message = "no usable GPU plugin:";
  for (const PluginReport& report : registry.reports) message += " " + report.path + ": " + report.reason + ";";
  message.pop_back();
  return message;
}

}  // namespace

const std::vector<PluginReport>& plugin_reports() { return registry().reports; }

const UsablePlugin* best_plugin() {
  const Registry& loaded = registry();
  return loaded.usable.empty() ? nullptr : &loaded.usable.front();
}

std::string no_usable_plugin_reason() { return unavailable_reason(registry()); }

}  // namespace rpa
