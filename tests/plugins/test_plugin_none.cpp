// With no plugin anywhere on the search path, the gpu backend is unavailable with a message that says
// so and where it looked, and auto falls back to the CPU.
#define BOOST_TEST_MODULE plugin_none
#include <boost/test/unit_test.hpp>

#include <string>

#include "rpa/rpa.h"

BOOST_AUTO_TEST_CASE(no_plugin_found) {
  if (rpa_plugin_report_count() != 0) {  // an installed rpa plugin directory is also searched
    BOOST_TEST_MESSAGE("plugins are installed on this machine; nothing to check");
    return;
  }
  BOOST_TEST(rpa_backend_available(RPA_BACKEND_GPU) == 0);
  rpa_context_options options;
  rpa_context_options_init(&options);
  options.backend = RPA_BACKEND_GPU;
  rpa_context* context = nullptr;
  BOOST_TEST(rpa_context_create(&options, &context) == RPA_STATUS_UNAVAILABLE);
  const std::string message = rpa_last_error();
  BOOST_TEST(message.find("no GPU plugin found") != std::string::npos, message);
  BOOST_TEST(message.find("RPA_PLUGIN_PATH") != std::string::npos, message);

  options.backend = RPA_BACKEND_AUTO;
  BOOST_REQUIRE(rpa_context_create(&options, &context) == RPA_STATUS_OK);
  rpa_backend backend = RPA_BACKEND_GPU;
  BOOST_TEST(rpa_context_get_backend(context, &backend) == RPA_STATUS_OK);
  BOOST_TEST(backend != RPA_BACKEND_GPU);
  rpa_context_destroy(context);
}
