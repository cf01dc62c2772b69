// Placeholder until the SIMD kernel lands (issue 3): the simd backend answers `unavailable`.
#include "core/backend.h"
#include "core/error.h"

namespace rpa {

std::unique_ptr<Backend> make_simd_backend(int) {
  fail(RPA_STATUS_UNAVAILABLE, "the simd backend is not built into this librpa yet");
}

}  // namespace rpa
