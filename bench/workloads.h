// The workloads `rpa bench` times: named batches of sequences over one attention shape.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "rpa/rpa.h"

namespace rpa::bench {

// The attention shape every workload uses; the defaults are Llama-3-8B's (32 q heads sharing 8 kv heads of
// dimension 128, pages of 16 tokens, bf16 data).
struct Config {
  int64_t q_heads = 32, kv_heads = 8, head_dim = 128, page_size = 16;
  rpa_dtype query_dtype = RPA_DTYPE_BF16, kv_dtype = RPA_DTYPE_BF16, out_dtype = RPA_DTYPE_BF16;

  // Bytes of K and V of one token over all kv heads.
  int64_t token_kv_bytes() const;
};

// One workload: a batch of sequences, each with its new query tokens and total context length.
struct Shape {
  std::string name, what;
  std::vector<int32_t> q_lens, context_lens;
};

// The workload names --workloads accepts: W1 W2 W3 context threads.
const std::vector<std::string>& workload_names();

// The shapes of the named workloads (`contexts`: the context lengths of the decode sweep). The context
// sweep keeps W1's KV size. "threads" times W1 on 1..cores threads, so it brings W1's shape.
std::vector<Shape> shapes_for(const std::vector<std::string>& workloads, const std::vector<int>& contexts);

}  // namespace rpa::bench
