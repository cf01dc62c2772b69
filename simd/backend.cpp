// The simd backend: plans a call as one flat list of work items, runs them in the context's own
// tbb::task_arena, and hands each to the Highway kernels (attention.cc) with that thread's scratch.
#include <tbb/blocked_range.h>
#include <tbb/info.h>
#include <tbb/parallel_for.h>
#include <tbb/partitioner.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <hwy/aligned_allocator.h>
#include <limits>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "core/backend.h"
#include "core/dtype.h"
#include "core/error.h"
#include "simd/attention.h"
#include "simd/plan.h"
#include "simd/tiles.h"

#if defined(__SANITIZE_THREAD__)
#define RPA_THREAD_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define RPA_THREAD_SANITIZER 1
#endif
#endif

#ifdef RPA_THREAD_SANITIZER
extern "C" void __tsan_acquire(void* address);
extern "C" void __tsan_release(void* address);
#endif

namespace rpa {

namespace {

// ThreadSanitizer cannot see oneTBB's synchronisation (Debian's libtbb is not instrumented), so the
// order TBB guarantees is stated to it: the caller's writes before a parallel_for happen before its tasks,
// each task's writes before the caller goes on, and a scratch slot's use by one task before the next
// holder's. Without ThreadSanitizer these are empty.
inline void handoff_release([[maybe_unused]] const void* address) {
#ifdef RPA_THREAD_SANITIZER
  __tsan_release(const_cast<void*>(address));
#endif
}
inline void handoff_acquire([[maybe_unused]] const void* address) {
#ifdef RPA_THREAD_SANITIZER
  __tsan_acquire(const_cast<void*>(address));
#endif
}

// Rows no processed sequence covers are 0 with lse -inf. Sequences cover [qsl[0], qsl[num_seqs]).
void zero_uncovered_rows(const rpa_problem& p) {
  const int64_t covered_begin = p.query_start_loc[0], covered_end = p.query_start_loc[p.num_seqs];
  const size_t row_bytes = static_cast<size_t>(p.head_dim) * dtype_size(p.out_dtype);
  for (int64_t t = 0; t < p.num_tokens; ++t) {
    if (t >= covered_begin && t < covered_end) continue;
    for (int64_t h = 0; h < p.num_q_heads; ++h) {
      std::memset(static_cast<char*>(p.out) + (t * p.out_token_stride + h * p.out_head_stride) * dtype_size(p.out_dtype),
                  0, row_bytes);
      if (p.lse) p.lse[t * p.lse_token_stride + h * p.lse_head_stride] = -std::numeric_limits<float>::infinity();
    }
  }
}

class SimdBackend final : public Backend {
 public:
  explicit SimdBackend(int num_threads)
      // More threads than cores only cost scratch memory (one slot each) and oversubscription.
      : num_threads_(std::min(num_threads > 0 ? num_threads : INT_MAX, tbb::info::default_concurrency())),
        arena_(num_threads_),
        tiles_(simd::tile_product_in_use()),
        scratch_(static_cast<size_t>(num_threads_)) {
    for (Scratch& scratch : scratch_) scratch.reserve(simd::scratch_floats(256));
  }

  rpa_backend kind() const override { return RPA_BACKEND_SIMD; }
  int num_threads() const override { return num_threads_; }

  std::unique_ptr<BackendPlan> plan(const rpa_problem& p) override {
    return std::make_unique<Plan>(*this, simd::make_plan(p, tiles_));
  }

 private:
  // Scratch of one arena slot. A slot is held by one thread at a time and a task never waits inside
  // the kernels, so concurrent calls on this backend never share a slot's memory.
  struct Scratch {
    hwy::AlignedFreeUniquePtr<float[]> data{nullptr, hwy::AlignedFreer()};
    size_t floats = 0;
    void reserve(size_t wanted) {
      if (wanted <= floats) return;
      data = hwy::AllocateAligned<float>(wanted);
      if (!data) throw std::bad_alloc();
      floats = wanted;
    }
  };

  // The tile path's pack buffer (simd/plan.h's waves): one kept between calls and lent to one call at a
  // time; a call that finds it lent or too small allocates its own.
  struct PackBuffer {
    hwy::AlignedFreeUniquePtr<uint16_t[]> data{nullptr, hwy::AlignedFreer()};
    size_t elements = 0;
  };
  PackBuffer take_pack_buffer(size_t elements) {
    PackBuffer buffer;
    {
      std::lock_guard<std::mutex> lock(pack_mutex_);
      std::swap(buffer, pack_buffer_);
    }
    if (buffer.elements < elements) {
      buffer.data = hwy::AllocateAligned<uint16_t>(elements);
      if (!buffer.data) throw std::bad_alloc();
      buffer.elements = elements;
    }
    return buffer;
  }
  void give_back_pack_buffer(PackBuffer buffer) {
    std::lock_guard<std::mutex> lock(pack_mutex_);
    if (buffer.elements > pack_buffer_.elements) std::swap(buffer, pack_buffer_);
  }

  float* scratch_of_this_thread(size_t floats) {
    const int slot = tbb::this_task_arena::current_thread_index();
    if (slot < 0 || static_cast<size_t>(slot) >= scratch_.size())
      fail(RPA_STATUS_INTERNAL, "simd backend: arena slot " + std::to_string(slot) + " outside its scratch");
    Scratch& scratch = scratch_[static_cast<size_t>(slot)];
    scratch.reserve(floats);  // grows only for a head_dim above 256
    return scratch.data.get();
  }

  // The work list is made once; each run allocates only its split partials (runs may overlap).
  class Plan final : public BackendPlan {
   public:
    Plan(SimdBackend& backend, simd::Plan plan) : backend_(backend), plan_(std::move(plan)) {}
    void run(const rpa_problem& p) override { backend_.execute(plan_, p); }

   private:
    SimdBackend& backend_;
    const simd::Plan plan_;
  };

  void execute(const simd::Plan& plan, const rpa_problem& p) {
    zero_uncovered_rows(p);
    if (plan.items.empty()) return;
    std::vector<float> partial(static_cast<size_t>(plan.partial_floats));
    const size_t floats = static_cast<size_t>(simd::scratch_floats(p.head_dim));
    const char call = 0;  // names this call's handoffs
    // A task's `work` on its slot's scratch, the slot's handoffs around it.
    const auto on_scratch = [&](auto&& work) {
      const size_t slot = static_cast<size_t>(tbb::this_task_arena::current_thread_index());
      float* scratch = scratch_of_this_thread(floats);
      handoff_acquire(&scratch_[slot]);
      work(scratch);
      handoff_release(&scratch_[slot]);
    };
    // Each wave's packs (the flags after the bf16 elements), then its items.
    size_t pack_elements = 0;
    for (const simd::Wave& wave : plan.waves)
      pack_elements = std::max(pack_elements, static_cast<size_t>(wave.elements + (wave.flags + 1) / 2));
    PackBuffer packs = take_pack_buffer(pack_elements);
    // The arena may run this functor on one of its threads (when the caller finds no free slot), reading the
    // caller's captures and writing the packs it allocated: its entry is a fixed address (reading a per-call
    // one would itself be the race), handed off after the caller's last write.
    static const char arena_entry = 0;
    handoff_release(&call);
    handoff_release(&arena_entry);
    arena_.execute([&] {
      handoff_acquire(&arena_entry);
      // One task per item or packing job (they are coarse); the arena's threads each own one scratch slot.
      // Each task's first and last acts are the call's handoffs (TBB's copy of the body holds &call).
      const auto each = [&](size_t begin, size_t end, const auto& work) {
        handoff_release(&call);
        tbb::parallel_for(
            tbb::blocked_range<size_t>(begin, end, 1),
            [&](const tbb::blocked_range<size_t>& range) {
              handoff_acquire(&call);
              on_scratch([&](float* scratch) {
                for (size_t i = range.begin(); i != range.end(); ++i) work(i, scratch);
              });
              handoff_release(&call);
            },
            tbb::simple_partitioner());
        handoff_acquire(&call);
      };
      for (const simd::Wave& wave : plan.waves) {
        const simd::TileWork tiles{plan.tiles, plan.packs.data(), packs.data.get(),
                                   reinterpret_cast<uint8_t*>(packs.data.get() + wave.elements)};
        each(wave.job_begin, wave.job_end,
             [&](size_t i, float* scratch) { simd::pack_kv(p, plan.jobs[i], tiles, scratch); });
        each(wave.item_begin, wave.item_end,
             [&](size_t i, float* scratch) { simd::attend_item(p, plan.items[i], scratch, partial.data(), tiles); });
      }
      each(0, plan.merges.size(),
           [&](size_t i, float* scratch) { simd::merge_splits(p, plan.merges[i], partial.data(), scratch); });
      handoff_release(&call);
    });
    handoff_acquire(&call);
    give_back_pack_buffer(std::move(packs));
  }

  int num_threads_;
  tbb::task_arena arena_;
  simd::TileProduct tiles_;  // the prefill products (AMX), or null
  std::vector<Scratch> scratch_;
  std::mutex pack_mutex_;
  PackBuffer pack_buffer_;
};

}  // namespace

bool simd_backend_available() { return simd::cpu_supported(); }

std::unique_ptr<Backend> make_simd_backend(int num_threads) {
  if (!simd_backend_available())
    fail(RPA_STATUS_UNAVAILABLE, "the simd backend needs an x86-64 CPU with SSE4.2, AES and CLMUL (or better)");
  return std::make_unique<SimdBackend>(num_threads);
}

}  // namespace rpa
