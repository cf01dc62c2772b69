// The scalar reference: the contract as executable code. Accumulates in double; serial; obvious.
#pragma once

#include "plugins/plugin_abi.h"

namespace rpa::reference {

// Writes every row of problem.out (and problem.lse when requested). Host memory only.
void attention(const rpa_problem& problem);

// Stores the new keys and values into their slots (host memory only). Also the simd backend's writer: a
// strided copy with one conversion per element.
void write_kv(const rpa_write_problem& problem);

}  // namespace rpa::reference
