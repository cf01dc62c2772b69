// Errors inside the library and inside a GPU plugin are C++ exceptions; each C boundary (core/api.cpp,
// plugins/gpu/entries.cpp) turns them into an rpa_status plus the thread's last-error text through
// guarded(), so none ever crosses an ABI. Header-only and needing nothing but rpa.h: a plugin shares this
// mapping without linking the core.
#pragma once

#include <exception>
#include <new>
#include <stdexcept>
#include <string>

#include "rpa/rpa.h"

namespace rpa {

class Error : public std::runtime_error {
 public:
  Error(rpa_status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  rpa_status status() const { return status_; }

 private:
  rpa_status status_;
};

[[noreturn]] inline void fail(rpa_status status, const std::string& message) { throw Error(status, message); }

[[noreturn]] inline void invalid(const std::string& message) { fail(RPA_STATUS_INVALID_ARGUMENT, message); }

// Runs `body`; an exception becomes its status (an Error's own, OUT_OF_MEMORY for bad_alloc, INTERNAL for
// anything else: a bug) with its message left in `last_error` (the caller's thread-local text).
template <typename Body>
rpa_status guarded(std::string& last_error, Body&& body) noexcept {
  const auto record = [&](rpa_status status, const char* message) {
    try {
      last_error = message;
    } catch (...) {  // no memory for the text: the status still tells
    }
    return status;
  };
  try {
    body();
    return RPA_STATUS_OK;
  } catch (const Error& error) {
    return record(error.status(), error.what());
  } catch (const std::bad_alloc&) {
    return record(RPA_STATUS_OUT_OF_MEMORY, "host memory allocation failed");
  } catch (const std::exception& error) {
    return record(RPA_STATUS_INTERNAL, error.what());
  } catch (...) {
    return record(RPA_STATUS_INTERNAL, "unknown exception");
  }
}

}  // namespace rpa
