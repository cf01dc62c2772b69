// Errors inside the library are C++ exceptions carrying an rpa_status; the C boundary (api.cpp)
// turns them into a status plus the thread's last-error text, so none ever crosses the ABI.
#pragma once

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

}  // namespace rpa
