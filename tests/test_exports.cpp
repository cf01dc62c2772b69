// Every function rpa.h declares is exported by the built library, and the library exports nothing else
// (C++ internals, Highway and oneTBB stay hidden); a user of rpa.h (this test: no RPA_BUILDING_LIBRARY)
// sees no export attribute.
#define BOOST_TEST_MODULE exports
#include <boost/test/unit_test.hpp>

#include <dlfcn.h>

#include <cstdio>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include "rpa/rpa.h"

namespace {

std::set<std::string> declared_functions() {
  std::ifstream header(RPA_HEADER_PATH);
  std::stringstream text;
  text << header.rdbuf();
  const std::string source = text.str();
  const std::regex declaration(R"(RPA_EXPORT[^;(]*\b(rpa_\w+)\s*\()");
  std::set<std::string> names;
  for (std::sregex_iterator it(source.begin(), source.end(), declaration), end; it != end; ++it)
    names.insert((*it)[1]);
  return names;
}

std::set<std::string> exported_functions() {
  std::set<std::string> names;
  FILE* pipe = popen("nm -D --defined-only '" RPA_LIBRARY_PATH "'", "r");
  BOOST_TEST_REQUIRE(pipe != nullptr);
  char line[1024];
  while (fgets(line, sizeof line, pipe)) {
    char address[64], type[8], name[900];
    if (std::sscanf(line, "%63s %7s %899s", address, type, name) == 3 && (type[0] == 'T' || type[0] == 'W'))
      names.insert(name);
  }
  pclose(pipe);
  return names;
}

}  // namespace

BOOST_AUTO_TEST_CASE(every_declared_function_is_exported) {
  const std::set<std::string> declared = declared_functions();
  BOOST_TEST(declared.size() >= 18u);  // the parse found the header's functions
  void* library = dlopen(RPA_LIBRARY_PATH, RTLD_NOW | RTLD_LOCAL);
  BOOST_TEST_REQUIRE(library != nullptr, dlerror());
  for (const std::string& name : declared) BOOST_TEST(dlsym(library, name.c_str()) != nullptr, name);
}

BOOST_AUTO_TEST_CASE(nothing_else_is_exported) {
  const std::set<std::string> declared = declared_functions();
  const std::set<std::string> exported = exported_functions();
  BOOST_TEST(!exported.empty());
  for (const std::string& name : exported) BOOST_TEST(declared.count(name) == 1u, name << " is exported but not declared");
}

#define RPA_TEXT_OF(...) #__VA_ARGS__
#define RPA_EXPANDED_TEXT_OF(...) RPA_TEXT_OF(__VA_ARGS__)

BOOST_AUTO_TEST_CASE(users_of_the_header_import) {
#if defined(_WIN32)
  BOOST_TEST(std::string(RPA_EXPANDED_TEXT_OF(RPA_EXPORT)) == "__declspec(dllimport)");
#else
  BOOST_TEST(std::string(RPA_EXPANDED_TEXT_OF(RPA_EXPORT)).empty());
#endif
}
