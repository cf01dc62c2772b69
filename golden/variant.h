// A diagnostic copy of the reference: one row of attention under altered rules, each the rule a known
// kind of kernel bug applies instead of the contract's. `rpa check` recomputes wrong rows with it to say
// which bug explains them. With a default Variant it computes exactly the contract (the tests hold it to
// the reference backend), so the altered rules are the only difference; reference/ stays the contract.
#pragma once

#include <cstdint>
#include <vector>

#include "golden/case.h"

namespace rpa::golden {

struct Variant {
  enum class Sinks { kContract, kIgnored, kScaled, kCapped };
  enum class Cap { kContract, kIgnored, kBeforeScale };
  double scale_power = 1;         // 0: the scale is missing, 2: applied twice
  Cap cap = Cap::kContract;       // the soft cap ignored, or applied to q.k before scaling
  Sinks sinks = Sinks::kContract; // sinks ignored, or scaled (and capped) like scores
  int64_t window_delta = 0;       // the window holds W + delta keys
  bool gqa_interleaved = false;   // q head h reads kv head h % KVH
  bool kv_swapped = false;        // K read where V is and V where K is
  int64_t table_block = 0;        // block-table slices of this many entries, clamped at the table's width
  int64_t leak_block = 0;         // every slot of blocks of this many pages enters as 0 * value (NaN leaks)
  int64_t empty_block_nan = 0;    // an online softmax over blocks of this many pages, from key 0, whose
                                  // first block has no visible key: NaN (exp(-inf - -inf))
};

// The row of q head `head` of query row `row`, computed as a query of sequence `seq` at position `pos`
// (the contract: the row's own sequence and position) under `variant`. `out` receives head_dim values;
// returns the lse. Table entries outside [0, P) are skipped, never read.
double variant_row(const Case& c, const Variant& variant, int64_t row, int64_t seq, int64_t pos, int64_t head,
                   double* out);

}  // namespace rpa::golden
