// The reference backend: the scalar contract (reference.cpp) behind the Backend interface.
#include "core/backend.h"
#include "reference/reference.h"

namespace rpa {

namespace {

class ReferenceBackend final : public Backend {
 public:
  rpa_backend kind() const override { return RPA_BACKEND_REFERENCE; }
  int num_threads() const override { return 1; }
  std::unique_ptr<BackendPlan> plan(const rpa_problem&) override { return std::make_unique<Plan>(); }

 private:
  // The reference plans nothing: it walks the contract row by row on every run.
  struct Plan final : BackendPlan {
    void run(const rpa_problem& problem) override { reference::attention(problem); }
  };
};

}  // namespace

std::unique_ptr<Backend> make_reference_backend() { return std::make_unique<ReferenceBackend>(); }

}  // namespace rpa
