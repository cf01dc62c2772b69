// The plugin loader against fake plugins that each break the ABI in one way (tests/plugins/fake_plugin.c)
// and against the real plugins built here: each is reported with the right reason, and the CPU backends
// keep working whatever the plugins do.
#define BOOST_TEST_MODULE plugin_loading
#include <boost/test/unit_test.hpp>

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "plugins/plugin_abi.h"
#include "tests/support/case.h"

namespace {

// Reports by file name (the loader keeps the first file of each name).
std::map<std::string, rpa_plugin_report> reports_by_file() {
  std::map<std::string, rpa_plugin_report> reports;
  for (int32_t i = 0; i < rpa_plugin_report_count(); ++i) {
    rpa_plugin_report report{};
    BOOST_REQUIRE_EQUAL(rpa_get_plugin_report(i, &report), RPA_STATUS_OK);
    const std::string path = report.path;
    reports.emplace(path.substr(path.rfind('/') + 1), report);
  }
  return reports;
}

bool starts_with(const std::string& text, const std::string& prefix) { return text.rfind(prefix, 0) == 0; }

void expect_rejected(const std::string& file, const std::string& reason_prefix, const std::string& also_contains = "") {
  const auto reports = reports_by_file();
  const auto found = reports.find(file);
  BOOST_REQUIRE_MESSAGE(found != reports.end(), file << " was not found by the loader");
  const rpa_plugin_report& report = found->second;
  BOOST_TEST(report.usable == 0);
  BOOST_TEST(report.device_count == 0);
  BOOST_TEST_MESSAGE(file << ": " << report.reason);
  BOOST_TEST(starts_with(report.reason, reason_prefix), file << " reason: " << report.reason);
  if (!also_contains.empty()) BOOST_TEST(std::string(report.reason).find(also_contains) != std::string::npos);
}

}  // namespace

BOOST_AUTO_TEST_CASE(wrong_abi_version_is_rejected) {
  expect_rejected("librpa_fake_wrong_abi.so", "wrong ABI: the plugin has ABI version " + std::to_string(RPA_PLUGIN_ABI_VERSION + 1000));
}

BOOST_AUTO_TEST_CASE(missing_entry_is_rejected) {
  expect_rejected("librpa_fake_no_entry.so", "not an rpa plugin: it exports no rpa_plugin_entry");
}

BOOST_AUTO_TEST_CASE(init_failure_is_rejected_with_the_plugins_message) {
  expect_rejected("librpa_fake_init_fails.so", "driver error: initialisation failed (device error)",
                  "refused on purpose");
  BOOST_TEST(std::string(reports_by_file().at("librpa_fake_init_fails.so").name) == "fake-init_fails");
}

BOOST_AUTO_TEST_CASE(zero_devices_is_rejected) {
  expect_rejected("librpa_fake_no_device.so", "no device: the fake-no_device runtime reports no device");
}

// A plugin claiming INT32_MAX devices (with unterminated descriptions) used to hang the loader.
BOOST_AUTO_TEST_CASE(implausible_device_count_is_rejected) {
  expect_rejected("librpa_fake_many_devices.so", "wrong ABI: the plugin reports 2147483647 devices, more than the 1024");
}

// A plugin whose constructor calls librpa while the core loads it used to abort the process (re-entered
// static initialisation); the nested call now fails cleanly and the loading goes on.
BOOST_AUTO_TEST_CASE(plugin_calling_librpa_while_loading_gets_an_error) {
  expect_rejected("librpa_fake_re_enter.so", "driver error: initialisation failed (device error)",
                  "nested rpa_get_plugin_report answered unavailable: a GPU plugin called librpa while the plugins "
                  "were being loaded");
}

// The real plugins load with dlopen anywhere (they open their GPU runtime themselves); without a GPU, or
// without its runtime, they report "no device" with the reason.
BOOST_AUTO_TEST_CASE(real_plugins_load_and_report_cleanly) {
  const char* names = std::getenv("RPA_TEST_REAL_PLUGINS");
  BOOST_REQUIRE(names);
  std::stringstream list(names);
  const auto reports = reports_by_file();
  for (std::string file; std::getline(list, file, ',');) {
    if (file.empty()) continue;
    const auto found = reports.find(file);
    BOOST_REQUIRE_MESSAGE(found != reports.end(), file << " was not found by the loader");
    const rpa_plugin_report& report = found->second;
    BOOST_TEST_MESSAGE(file << ": " << (report.usable ? "usable: " : "rejected: ") << report.reason);
    if (report.usable) {
      BOOST_TEST(report.device_count > 0);
      continue;
    }
    BOOST_TEST(starts_with(report.reason, "no device: "), file << " reason: " << report.reason);
  }
}

// Without a GPU, the gpu backend is refused with every plugin's reason; with one, it is created.
BOOST_AUTO_TEST_CASE(gpu_backend_unavailable_names_each_plugin) {
  rpa_context_options options;
  rpa_context_options_init(&options);
  options.backend = RPA_BACKEND_GPU;
  rpa_context* context = nullptr;
  if (rpa_backend_available(RPA_BACKEND_GPU)) {
    BOOST_TEST(rpa_context_create(&options, &context) == RPA_STATUS_OK, rpa_last_error());
    rpa_context_destroy(context);
    return;
  }
  BOOST_TEST(rpa_context_create(&options, &context) == RPA_STATUS_UNAVAILABLE);
  BOOST_TEST(context == nullptr);
  const std::string message = rpa_last_error();
  BOOST_TEST(message.find("no usable GPU plugin") != std::string::npos, message);
  BOOST_TEST(message.find("librpa_fake_wrong_abi.so: wrong ABI") != std::string::npos, message);
  BOOST_TEST(message.find("librpa_fake_no_device.so: no device") != std::string::npos, message);
}

BOOST_AUTO_TEST_CASE(cpu_keeps_working) {
  using namespace rpa::testing;
  RandomSpec spec;
  spec.q_lens = {3, 1};
  spec.context_lens = {7, 5};
  const Case c = random_case(spec, 11);
  const Result expected = run_case(c, RPA_BACKEND_REFERENCE);
  BOOST_REQUIRE_EQUAL(expected.status, RPA_STATUS_OK);
  for (rpa_backend backend : {RPA_BACKEND_AUTO, RPA_BACKEND_SIMD}) {
    if (!rpa_backend_available(backend)) continue;
    const Result got = run_case(c, backend);
    BOOST_REQUIRE_MESSAGE(got.status == RPA_STATUS_OK, got.message);
    BOOST_TEST(max_abs_diff(got.out, expected.out) <= 2e-5);
    BOOST_TEST(max_abs_diff(got.lse, expected.lse) <= 2e-5);
  }
}

// plugin_abi.h's rpa_plugin_read_problem: how a plugin reads a problem struct written by a core of another
// age (struct_size first, fields only appended, zero the default of each).
namespace {

rpa_problem filled_problem() {
  rpa_problem p;
  std::memset(&p, 0x5a, sizeof p);  // every byte set: a field left unread shows up
  p.struct_size = sizeof p;
  p.head_dim = 128, p.num_tokens = 7, p.metadata_memory = RPA_MEMORY_DEVICE, p.max_query_len = 9;
  return p;
}

}  // namespace

BOOST_AUTO_TEST_CASE(an_older_plugin_reads_its_prefix_of_a_grown_problem) {
  const rpa_problem core = filled_problem();
  const uint32_t old_size = offsetof(rpa_problem, metadata_memory);  // built before device metadata
  std::vector<unsigned char> plugin(old_size + 16, 0xee);             // its struct, then bytes it does not own
  BOOST_TEST_REQUIRE(rpa_plugin_read_problem(plugin.data(), old_size, &core, old_size) == 1);
  rpa_problem seen;
  std::memcpy(&seen, plugin.data(), old_size);
  BOOST_TEST(seen.struct_size == old_size);
  BOOST_TEST(seen.head_dim == 128);
  BOOST_TEST(seen.num_tokens == 7);
  BOOST_TEST(std::memcmp(reinterpret_cast<const char*>(&seen) + sizeof(uint32_t),
                         reinterpret_cast<const char*>(&core) + sizeof(uint32_t), old_size - sizeof(uint32_t)) == 0);
  for (size_t i = old_size; i < plugin.size(); ++i) BOOST_TEST(plugin[i] == 0xee, "byte " << i << " written");
}

BOOST_AUTO_TEST_CASE(a_newer_plugin_gets_defaults_for_fields_an_older_core_lacks) {
  rpa_problem core = filled_problem();
  core.struct_size = RPA_PROBLEM_REQUIRED_SIZE - sizeof(int32_t) * 2;  // a core without the bounds
  rpa_problem seen;
  BOOST_TEST_REQUIRE(rpa_plugin_read_problem(&seen, sizeof seen, &core, offsetof(rpa_problem, metadata_memory)) == 1);
  BOOST_TEST(seen.struct_size == sizeof seen);
  BOOST_TEST(seen.head_dim == 128);
  BOOST_TEST(seen.metadata_memory == RPA_MEMORY_DEVICE);  // written by that core
  BOOST_TEST(seen.max_query_len == 0);                    // not written: the default
  BOOST_TEST(seen.max_context_len == 0);
}

BOOST_AUTO_TEST_CASE(a_plugin_refuses_a_core_without_the_fields_it_needs) {
  rpa_problem core = filled_problem();
  core.struct_size = offsetof(rpa_problem, metadata_memory);
  rpa_problem seen;
  std::memset(&seen, 0x11, sizeof seen);
  BOOST_TEST(rpa_plugin_read_problem(&seen, sizeof seen, &core, RPA_PROBLEM_REQUIRED_SIZE) == 0);
  BOOST_TEST(seen.head_dim == 0x1111111111111111);  // nothing copied
}
