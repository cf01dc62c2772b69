// The AMD plugin (librpa_hip.so) against fake HIP runtimes and a fake hipRTC (fake_hip.c, fake_hiprtc.c):
// it loads with ROCm 6's and 7's sonames, takes the embedded code object for a device reporting gfx90a
// and the run-time compile for one reporting gfx942 (writing the disk cache, then reusing it, and
// replacing a corrupt entry), and names the reason when the runtime, a symbol or hipRTC is missing or the
// runtime is too old. meson.build runs each case in its own process with its own environment
// (RPA_HIP_RUNTIME, FAKE_HIP_ARCH, FAKE_HIP_LOG, RPA_KERNEL_CACHE). The fake runs no kernel: these cases
// check what the plugin asks of the runtime, not attention values (gpu_compare does that on a GPU).
#define BOOST_TEST_MODULE hip_runtime
#include <boost/test/unit_test.hpp>

#include <dirent.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "tests/support/case.h"

namespace {

std::string env(const char* name) {
  const char* value = std::getenv(name);
  return value ? value : "";
}

// The fake runtime's log so far.
std::string fake_log() {
  std::ifstream file(env("FAKE_HIP_LOG"));
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

bool contains(const std::string& text, const std::string& what) { return text.find(what) != std::string::npos; }

// Each case starts from an empty log and an empty cache directory.
struct Fresh {
  Fresh() {
    std::remove(env("FAKE_HIP_LOG").c_str());
    for (const std::string& file : cache_files()) std::remove(file.c_str());
  }
  static std::vector<std::string> cache_files() {
    std::vector<std::string> files;
    const std::string directory = env("RPA_KERNEL_CACHE");
    if (DIR* dir = opendir(directory.c_str())) {
      while (const dirent* entry = readdir(dir))
        if (entry->d_name[0] != '.') files.push_back(directory + "/" + entry->d_name);
      closedir(dir);
    }
    return files;
  }
};

rpa_plugin_report hip_report() {
  for (int32_t i = 0; i < rpa_plugin_report_count(); ++i) {
    rpa_plugin_report report{};
    BOOST_REQUIRE_EQUAL(rpa_get_plugin_report(i, &report), RPA_STATUS_OK);
    if (contains(report.path, "librpa_hip.so")) return report;
  }
  BOOST_FAIL("librpa_hip.so was not found by the loader");
  return {};
}

// Creates and destroys a gpu context; returns its status and message.
std::pair<rpa_status, std::string> create_gpu_context() {
  rpa_context_options options;
  rpa_context_options_init(&options);
  options.backend = RPA_BACKEND_GPU;
  rpa_context* context = nullptr;
  const rpa_status status = rpa_context_create(&options, &context);
  const std::string message = status == RPA_STATUS_OK ? "" : rpa_last_error();
  rpa_context_destroy(context);
  return {status, message};
}

// A batch with one decode and one prefill sequence, head_dim 64, run through the plugin.
void run_mixed_batch() {
  using namespace rpa::testing;
  RandomSpec spec;
  spec.q_lens = {1, 5};
  spec.context_lens = {40, 9};
  spec.head_dim = 64;
  const Result result = run_case(random_case(spec, 3), RPA_BACKEND_GPU);
  BOOST_REQUIRE_MESSAGE(result.status == RPA_STATUS_OK, result.message);
}

void expect_usable(const std::string& arch, const std::string& kernels) {
  const rpa_plugin_report report = hip_report();
  BOOST_TEST_MESSAGE("librpa_hip.so: " << report.reason);
  BOOST_TEST(report.usable == 1, report.reason);
  BOOST_TEST(report.device_count == 1);
  BOOST_TEST(contains(report.reason, "(" + arch + ")"), report.reason);
  BOOST_TEST(contains(report.reason, "kernels: " + kernels), report.reason);
}

void expect_rejected(const std::string& reason) {
  const rpa_plugin_report report = hip_report();
  BOOST_TEST_MESSAGE("librpa_hip.so: " << report.reason);
  BOOST_TEST(report.usable == 0);
  BOOST_TEST(contains(report.reason, reason), report.reason);
  BOOST_TEST(create_gpu_context().first == RPA_STATUS_UNAVAILABLE);
}

}  // namespace

// ROCm 6, gfx90a: the embedded gfx90a code object (e_flags machine 0x3f), nothing compiled.
BOOST_AUTO_TEST_CASE(embedded_code_object_for_gfx90a) {
  Fresh fresh;
  expect_usable("gfx90a:sramecc+:xnack-", "embedded code object gfx90a");
  BOOST_TEST(contains(hip_report().reason, "Fake AMD GPU (ROCm 6)"));
  const auto [status, message] = create_gpu_context();
  BOOST_REQUIRE_MESSAGE(status == RPA_STATUS_OK, message);
  run_mixed_batch();
  const std::string log = fake_log();
  BOOST_TEST(count(log, "load elf mach=0x3f") == 2, log);  // the context above and run_mixed_batch's
  BOOST_TEST(!contains(log, "compile"), log);
  BOOST_TEST(!contains(log, "function missing"), log);
  BOOST_TEST(contains(log, "launch rpa_decode_f32_64_4 grid"), log);
  BOOST_TEST(contains(log, "launch rpa_attention_f32_64 grid"), log);
  BOOST_TEST(contains(log, "args packed"), log);
  BOOST_TEST(Fresh::cache_files().empty());
}

// ROCm 7, gfx942 (no code object): hipRTC compiles for the exact target at first use, the cache keeps it
// for the next context, and a corrupt cache entry is compiled again and replaced.
BOOST_AUTO_TEST_CASE(run_time_compile_for_gfx942_and_disk_cache) {
  Fresh fresh;
  const std::string target = "gfx942:sramecc+:xnack-";
  expect_usable(target, "hipRTC for " + target + " at first use");
  BOOST_TEST(contains(hip_report().reason, "Fake AMD GPU (ROCm 7)"));
  BOOST_REQUIRE(create_gpu_context().first == RPA_STATUS_OK);
  std::string log = fake_log();
  BOOST_TEST(count(log, "compile --offload-arch=" + target + " -O3 -std=c++17") == 1, log);
  BOOST_TEST(count(log, "load fake " + target) == 1, log);
  const std::vector<std::string> files = Fresh::cache_files();
  BOOST_REQUIRE_EQUAL(files.size(), 1u);
  BOOST_TEST(contains(files[0], "gfx942_sramecc__xnack-"), files[0]);

  // A second context (as a second process would) loads the cached code object.
  run_mixed_batch();
  log = fake_log();
  BOOST_TEST(count(log, "compile --offload-arch=") == 1, log);
  BOOST_TEST(count(log, "load fake " + target) == 2, log);
  BOOST_TEST(contains(log, "launch rpa_attention_f32_64 grid"), log);

  // A corrupt entry (one byte changed) reads as a miss: compiled again, and the file replaced.
  {
    std::fstream file(files[0], std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(-20, std::ios::end);
    file.put('#');
  }
  BOOST_REQUIRE(create_gpu_context().first == RPA_STATUS_OK);
  BOOST_REQUIRE(create_gpu_context().first == RPA_STATUS_OK);
  log = fake_log();
  BOOST_TEST(count(log, "compile --offload-arch=") == 2, log);
  BOOST_TEST(count(log, "load fake " + target) == 4, log);
  BOOST_TEST(Fresh::cache_files().size() == 1u);  // no temporary file left behind
}

// RPA_GPU_KERNELS=rtc compiles even where a code object is embedded.
BOOST_AUTO_TEST_CASE(run_time_compile_forced) {
  Fresh fresh;
  expect_usable("gfx90a:sramecc+:xnack-", "hipRTC for gfx90a:sramecc+:xnack- at first use");
  BOOST_REQUIRE(create_gpu_context().first == RPA_STATUS_OK);
  const std::string log = fake_log();
  BOOST_TEST(count(log, "compile --offload-arch=gfx90a:sramecc+:xnack-") == 1, log);
  BOOST_TEST(!contains(log, "load elf"), log);
}

// A compile error reaches the caller with hipRTC's log, and nothing is cached.
BOOST_AUTO_TEST_CASE(compile_error_is_reported) {
  Fresh fresh;
  const auto [status, message] = create_gpu_context();
  BOOST_TEST(status == RPA_STATUS_DEVICE_ERROR);
  BOOST_TEST(contains(message, "hipRTC could not compile the kernels for gfx942"), message);
  BOOST_TEST(contains(message, "fake compile error"), message);
  BOOST_TEST(Fresh::cache_files().empty());
}

BOOST_AUTO_TEST_CASE(missing_runtime_is_named) { expect_rejected("no HIP runtime (ROCm 5 or later) found"); }

BOOST_AUTO_TEST_CASE(missing_symbol_is_named) {
  expect_rejected("the HIP runtime is incomplete:");
  BOOST_TEST(contains(hip_report().reason, "lacks hipModuleLaunchKernel"), hip_report().reason);
}

BOOST_AUTO_TEST_CASE(old_runtime_is_named) { expect_rejected("is version 4.2: rpa needs ROCm 5 or later"); }

// A runtime without hipRTC: gfx942 has no kernels (the reason says why), gfx90a still has its code object.
BOOST_AUTO_TEST_CASE(missing_hiprtc_is_named) {
  Fresh fresh;
  const bool gfx90a = contains(env("FAKE_HIP_ARCH"), "gfx90a");
  if (gfx90a) {
    expect_usable("gfx90a:sramecc+:xnack-", "embedded code object gfx90a");
    BOOST_TEST(create_gpu_context().first == RPA_STATUS_OK);
    return;
  }
  expect_usable("gfx942:sramecc+:xnack-", "no kernels for gfx942:sramecc+:xnack- (no embedded code object; no hipRTC library");
  const auto [status, message] = create_gpu_context();
  BOOST_TEST(status == RPA_STATUS_UNAVAILABLE);
  BOOST_TEST(contains(message, "has no embedded code object (the plugin carries"), message);
  BOOST_TEST(contains(message, "gfx90a"), message);
  BOOST_TEST(contains(message, "hipRTC is missing: no hipRTC library"), message);
}
