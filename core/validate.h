// Validation in two halves. validate_plan_args checks everything that decides the work (metadata,
// shapes, dtypes, strides, memory kinds, num_seqs, the window) and returns a plan whose problem owns a
// copy of the metadata; float tensors may lack data then. validate_run_args checks one run's tensors and
// scalars against that plan. Both throw rpa::Error naming the argument and the offending index, with the
// messages a one-call rpa_attention gives. Only host memory is read: the metadata when metadata_memory
// is host (device metadata is bounded at plan time and checked on the device), the sinks when memory is.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "plugins/plugin_abi.h"

namespace rpa {

// A float tensor's layout as the plan saw it (strides resolved: never all-zero).
struct TensorLayout {
  bool present = false;
  rpa_dtype dtype = RPA_DTYPE_F32;
  int32_t ndim = 0;
  std::array<int64_t, RPA_MAX_DIMS> shape{}, strides{};
};

// The float tensors a run passes, in validation order.
enum TensorSlot { kQueries, kKvPages, kKCache, kVCache, kOut, kLse, kSinks, kTensorSlots };

class PlannedCall {
 public:
  PlannedCall() = default;
  PlannedCall(const PlannedCall&) = delete;
  PlannedCall& operator=(const PlannedCall&) = delete;

  // Metadata pointers point into this object's own copies (device metadata: the caller's arrays the plan
  // was made with); tensor pointers and scalars are unset.
  const rpa_problem& problem() const { return problem_; }
  const TensorLayout& layout(TensorSlot slot) const { return layouts_[slot]; }
  int64_t metadata_seqs() const { return metadata_seqs_; }

 private:
  friend std::unique_ptr<PlannedCall> validate_plan_args(const rpa_attention_args& args);
  rpa_problem problem_{};
  int64_t metadata_seqs_ = 0;  // S of the metadata arrays (num_seqs may be fewer)
  std::array<TensorLayout, kTensorSlots> layouts_{};
  std::vector<int32_t> context_lens_, block_tables_, query_start_loc_;
};

std::unique_ptr<PlannedCall> validate_plan_args(const rpa_attention_args& args);

// The plan's problem with this run's tensors, scalars, stream and synchronize filled in; with device
// metadata, also the run's metadata arrays when it passes them (else the plan's).
rpa_problem validate_run_args(const PlannedCall& plan, const rpa_attention_args& args);

// Device metadata copied back to the host (rpa_plan_get_error): the rules host metadata follows, then
// the plan's bounds; throws the message host validation gives. `planned` is a device-metadata plan's problem.
void check_device_metadata(const rpa_problem& planned, const int32_t* lens, const int32_t* tables,
                           int64_t table_stride, const int32_t* qsl);

// rpa_merge_states(): six tensors of one [T, H, D] / [T, H] shape, lse f32.
rpa_merge_problem validate_merge_args(const rpa_merge_args& args);
// The same for rpa_write_kv(); `slots` receives the slot mapping with earlier duplicates set to -1, and
// the problem points into it.
rpa_write_problem validate_write_kv_args(const rpa_write_kv_args& args, std::vector<int32_t>& slots);

}  // namespace rpa
