// Turns rpa_attention_args into a validated rpa_problem, or throws rpa::Error naming the argument and
// the offending index. Reads only host memory: the metadata always, the sinks only when memory is host.
#pragma once

#include "core/problem.h"

namespace rpa {

rpa_problem validate_attention_args(const rpa_attention_args& args);

}  // namespace rpa
