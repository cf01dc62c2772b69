#include "bench/workloads.h"

#include <algorithm>

#include "core/dtype.h"

namespace rpa::bench {

namespace {
constexpr int64_t kDecodeTokens = 64 * 2048;  // KV tokens of W1, kept by the context sweep
}

int64_t Config::token_kv_bytes() const { return 2 * kv_heads * head_dim * dtype_size(kv_dtype); }

const std::vector<std::string>& workload_names() {
  static const std::vector<std::string> names{"W1", "W2", "W3", "context", "threads"};
  return names;
}

std::vector<Shape> shapes_for(const std::vector<std::string>& workloads, const std::vector<int>& contexts) {
  std::vector<Shape> shapes;
  auto want = [&](const std::string& name) {
    return std::find(workloads.begin(), workloads.end(), name) != workloads.end();
  };
  if (want("W1") || want("threads"))
    shapes.push_back({"W1", "decode: 64 seqs x ctx 2048", std::vector<int32_t>(64, 1), std::vector<int32_t>(64, 2048)});
  if (want("W2"))
    shapes.push_back({"W2", "prefill: 4 seqs x 1024 new", std::vector<int32_t>(4, 1024), std::vector<int32_t>(4, 1024)});
  if (want("W3")) {
    Shape mixed{"W3", "mixed: 32 decodes ctx 2048 + 2 chunks 512 @ ctx 1024", std::vector<int32_t>(32, 1),
                std::vector<int32_t>(32, 2048)};
    for (int i = 0; i < 2; ++i) {
      mixed.q_lens.push_back(512);
      mixed.context_lens.push_back(1024);
    }
    shapes.push_back(mixed);
  }
  if (want("context"))
    for (int context : contexts) {
      const int seqs = static_cast<int>(std::max<int64_t>(1, kDecodeTokens / context));
      shapes.push_back({"ctx " + std::to_string(context),
                        "decode: " + std::to_string(seqs) + " seqs x ctx " + std::to_string(context),
                        std::vector<int32_t>(seqs, 1), std::vector<int32_t>(seqs, context)});
    }
  return shapes;
}

}  // namespace rpa::bench
