// This machine's limits, measured with Highway loops (machine.cc) on the host's threads.
#pragma once

#include <cstddef>

namespace rpa::bench {

// Peak f32 FMA rate in FLOP/s (2 per lane per FMA) of `threads` threads running independent FMA
// chains, best of a few tries.
double fma_peak_flops(int threads);

// Read bandwidth in bytes/s: `threads` threads summing disjoint parts of data[0, bytes) with vector
// loads; the median of `repeats` passes.
double read_bandwidth(const void* data, size_t bytes, int threads, int repeats);

// The Highway target these loops run on.
const char* machine_target();

}  // namespace rpa::bench
