// rpa_merge_states on host memory (every backend; the GPU backend runs device memory in its plugin).
#include <algorithm>
#include <cmath>
#include <limits>

#include "core/backend.h"
#include "core/dtype.h"

namespace rpa {

// Log-sum-exp of the two states in double. A state with lse -inf has no key: it contributes nothing
// and its output is not read (it may hold anything); two such states give 0 and -inf.
void merge_states_on_host(const rpa_merge_problem& p) {
  const double inf = std::numeric_limits<double>::infinity();
  for (int64_t t = 0; t < p.num_tokens; ++t)
    for (int64_t h = 0; h < p.num_heads; ++h) {
      const double lse_a = p.lse_a[t * p.lse_a_token_stride + h * p.lse_a_head_stride];
      const double lse_b = p.lse_b[t * p.lse_b_token_stride + h * p.lse_b_head_stride];
      const double max = std::max(lse_a, lse_b);
      const double weight_a = lse_a == -inf ? 0.0 : std::exp(lse_a - max);
      const double weight_b = lse_b == -inf ? 0.0 : std::exp(lse_b - max);
      const double sum = weight_a + weight_b;  // NaN when an lse is NaN or +inf: the row becomes NaN
      const int64_t a = t * p.out_a_token_stride + h * p.out_a_head_stride;
      const int64_t b = t * p.out_b_token_stride + h * p.out_b_head_stride;
      const int64_t o = t * p.out_token_stride + h * p.out_head_stride;
      for (int64_t d = 0; d < p.head_dim; ++d) {
        double value = 0.0;
        if (weight_a > 0) value += weight_a * load_float(p.out_a, p.out_a_dtype, a + d);
        if (weight_b > 0) value += weight_b * load_float(p.out_b, p.out_b_dtype, b + d);
        store_double(p.out, p.out_dtype, o + d, max == -inf ? 0.0 : value / sum);  // one rounding
      }
      if (p.lse)
        p.lse[t * p.lse_token_stride + h * p.lse_head_stride] = static_cast<float>(max == -inf ? -inf : max + std::log(sum));
    }
}

}  // namespace rpa
