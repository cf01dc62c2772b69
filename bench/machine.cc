// Highway loops that measure the machine's FMA peak and read bandwidth, compiled per target like the
// kernels (same flags) so that both run on the same instruction set.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include "bench/machine.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "bench/machine.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep

#include <hwy/highway.h>

HWY_BEFORE_NAMESPACE();
namespace rpa::bench {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Runs `iterations` rounds of 16 independent FMA chains (enough to cover the FMA latency times the
// FMA pipes of current cores); returns the FLOPs done and a value that keeps the work alive.
double FmaLoop(int64_t iterations, float* sink) {
  const hn::ScalableTag<float> df;
  constexpr int kChains = 16;
  // Distinct starting values, or the compiler would merge the identical chains into one.
  auto a0 = hn::Set(df, 1.00f), a1 = hn::Set(df, 1.01f), a2 = hn::Set(df, 1.02f), a3 = hn::Set(df, 1.03f);
  auto a4 = hn::Set(df, 1.04f), a5 = hn::Set(df, 1.05f), a6 = hn::Set(df, 1.06f), a7 = hn::Set(df, 1.07f);
  auto a8 = hn::Set(df, 1.08f), a9 = hn::Set(df, 1.09f), a10 = hn::Set(df, 1.10f), a11 = hn::Set(df, 1.11f);
  auto a12 = hn::Set(df, 1.12f), a13 = hn::Set(df, 1.13f), a14 = hn::Set(df, 1.14f), a15 = hn::Set(df, 1.15f);
  const auto mul = hn::Set(df, 0.999999f), add = hn::Set(df, 1e-7f);
  for (int64_t i = 0; i < iterations; ++i) {
    a0 = hn::MulAdd(a0, mul, add); a1 = hn::MulAdd(a1, mul, add); a2 = hn::MulAdd(a2, mul, add);
    a3 = hn::MulAdd(a3, mul, add); a4 = hn::MulAdd(a4, mul, add); a5 = hn::MulAdd(a5, mul, add);
    a6 = hn::MulAdd(a6, mul, add); a7 = hn::MulAdd(a7, mul, add); a8 = hn::MulAdd(a8, mul, add);
    a9 = hn::MulAdd(a9, mul, add); a10 = hn::MulAdd(a10, mul, add); a11 = hn::MulAdd(a11, mul, add);
    a12 = hn::MulAdd(a12, mul, add); a13 = hn::MulAdd(a13, mul, add); a14 = hn::MulAdd(a14, mul, add);
    a15 = hn::MulAdd(a15, mul, add);
  }
  const auto total = hn::Add(hn::Add(hn::Add(hn::Add(a0, a1), hn::Add(a2, a3)), hn::Add(hn::Add(a4, a5), hn::Add(a6, a7))),
                             hn::Add(hn::Add(hn::Add(a8, a9), hn::Add(a10, a11)), hn::Add(hn::Add(a12, a13), hn::Add(a14, a15))));
  *sink = hn::GetLane(hn::SumOfLanes(df, total));
  return 2.0 * kChains * static_cast<double>(hn::Lanes(df)) * static_cast<double>(iterations);
}

// Sums data[0, bytes) (bytes a multiple of 64) as 32-bit integers with four vector accumulators.
uint32_t ReadLoop(const uint8_t* data, size_t bytes) {
  const hn::ScalableTag<uint32_t> du;
  const size_t lanes = hn::Lanes(du);
  const uint32_t* words = reinterpret_cast<const uint32_t*>(data);
  const size_t count = bytes / sizeof(uint32_t);
  auto s0 = hn::Zero(du), s1 = s0, s2 = s0, s3 = s0;
  size_t i = 0;
  for (; i + 4 * lanes <= count; i += 4 * lanes) {
    s0 = hn::Add(s0, hn::LoadU(du, words + i));
    s1 = hn::Add(s1, hn::LoadU(du, words + i + lanes));
    s2 = hn::Add(s2, hn::LoadU(du, words + i + 2 * lanes));
    s3 = hn::Add(s3, hn::LoadU(du, words + i + 3 * lanes));
  }
  uint32_t total = hn::GetLane(hn::SumOfLanes(du, hn::Add(hn::Add(s0, s1), hn::Add(s2, s3))));
  for (; i < count; ++i) total += words[i];
  return total;
}

int64_t TargetBits() { return HWY_TARGET; }

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace rpa::bench
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace rpa::bench {

HWY_EXPORT(FmaLoop);
HWY_EXPORT(ReadLoop);
HWY_EXPORT(TargetBits);

namespace {

// Seconds for `threads` threads to each run work(index), started together.
template <typename Work>
double time_threads(int threads, Work&& work) {
  std::vector<std::thread> pool;
  const auto start = std::chrono::steady_clock::now();
  for (int t = 0; t < threads; ++t) pool.emplace_back([&, t] { work(t); });
  for (std::thread& thread : pool) thread.join();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

double fma_peak_flops(int threads) {
  constexpr int64_t kIterations = 20'000'000;  // ~0.1 s per thread at 3 GHz
  std::vector<float> sinks(static_cast<size_t>(threads));
  double best = 0;
  for (int attempt = 0; attempt < 3; ++attempt) {
    std::vector<double> flops(static_cast<size_t>(threads));
    const double seconds = time_threads(threads, [&](int t) {
      flops[t] = HWY_DYNAMIC_DISPATCH(FmaLoop)(kIterations, &sinks[t]);
    });
    double total = 0;
    for (double f : flops) total += f;
    best = std::max(best, total / seconds);
  }
  return best;
}

double read_bandwidth(const void* data, size_t bytes, int threads, int repeats) {
  const uint8_t* base = static_cast<const uint8_t*>(data);
  const size_t chunk = bytes / static_cast<size_t>(threads) / 64 * 64;
  // Small buffers are read several times per timing so that thread start-up does not dominate.
  const int passes = static_cast<int>(std::max<size_t>(1, (size_t{256} << 20) / std::max<size_t>(bytes, 1)));
  std::vector<uint32_t> sums(static_cast<size_t>(threads));
  std::vector<double> rates;
  for (int r = 0; r < repeats; ++r) {
    const double seconds = time_threads(threads, [&](int t) {
      const size_t begin = chunk * static_cast<size_t>(t);
      const size_t end = t + 1 == threads ? bytes : begin + chunk;
      for (int pass = 0; pass < passes; ++pass) sums[t] += HWY_DYNAMIC_DISPATCH(ReadLoop)(base + begin, end - begin);
    });
    rates.push_back(static_cast<double>(bytes) * passes / seconds);
  }
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}

const char* machine_target() { return hwy::TargetName(HWY_DYNAMIC_DISPATCH(TargetBits)()); }

}  // namespace rpa::bench
#endif  // HWY_ONCE
