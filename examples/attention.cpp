// rpa from C++: vLLM's cache layout ([2, P, page, KVH, D]: K and V as two strided views), bfloat16 inputs,
// a float32 output, a sliding window, and the error message for a bad block table.
// Build: c++ -std=c++17 attention.cpp $(pkg-config --cflags --libs rpa) -o attention_cpp
// (or CMake: find_package(rpa) and target_link_libraries(app rpa::rpa); see CMakeLists.txt)
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include <rpa/rpa.h>

namespace {

// bfloat16 is the upper half of a float; the values used here (multiples of 1/8 up to 2) fit exactly.
uint16_t bf16_bits(float exact) {
  uint32_t u;
  std::memcpy(&u, &exact, 4);
  return static_cast<uint16_t>(u >> 16);
}

struct ContextDeleter {
  void operator()(rpa_context* c) const { rpa_context_destroy(c); }
};

}  // namespace

int main() {
  constexpr int64_t P = 4, page = 8, KVH = 2, QH = 4, D = 64, S = 1, W = 4, T = 3;
  // One sequence of 30 tokens (pages 3, 1, 0, 2), the last 3 of them new.
  std::vector<uint16_t> cache(2 * P * page * KVH * D), queries(T * QH * D);
  for (size_t i = 0; i < cache.size(); ++i) cache[i] = bf16_bits(static_cast<float>(i % 33) / 8 - 2);
  for (size_t i = 0; i < queries.size(); ++i) queries[i] = bf16_bits(static_cast<float>(i % 7) / 8 - 0.25f);
  std::vector<float> out(T * QH * D);
  std::vector<int32_t> context_lens{30}, block_tables{3, 1, 0, 2}, query_start_loc{0, 3};

  rpa_context* raw = nullptr;
  if (rpa_context_create(nullptr, &raw) != RPA_STATUS_OK) {
    std::fprintf(stderr, "%s\n", rpa_last_error());
    return 1;
  }
  std::unique_ptr<rpa_context, ContextDeleter> ctx(raw);

  rpa_attention_args args;
  rpa_attention_args_init(&args);
  const int64_t kv_strides[4] = {page * KVH * D, KVH * D, D, 1};
  args.k_cache = {cache.data(), RPA_DTYPE_BF16, 4, {P, page, KVH, D}, {}};
  args.v_cache = {cache.data() + P * page * KVH * D, RPA_DTYPE_BF16, 4, {P, page, KVH, D}, {}};
  std::memcpy(args.k_cache.strides, kv_strides, sizeof kv_strides);  // explicit strides: any view works
  std::memcpy(args.v_cache.strides, kv_strides, sizeof kv_strides);
  args.queries = {queries.data(), RPA_DTYPE_BF16, 3, {T, QH, D}, {}};
  args.context_lens = {context_lens.data(), RPA_DTYPE_I32, 1, {S}, {}};
  args.block_tables = {block_tables.data(), RPA_DTYPE_I32, 2, {S, W}, {}};
  args.query_start_loc = {query_start_loc.data(), RPA_DTYPE_I32, 1, {S + 1}, {}};
  args.num_seqs = S;
  args.sliding_window = 16;
  args.out = {out.data(), RPA_DTYPE_F32, 3, {T, QH, D}, {}};
  if (rpa_attention(ctx.get(), &args) != RPA_STATUS_OK) {
    std::fprintf(stderr, "%s\n", rpa_last_error());
    return 1;
  }
  std::printf("out[2][3][0..3] = %.5f %.5f %.5f %.5f\n", out[2 * QH * D + 3 * D], out[2 * QH * D + 3 * D + 1],
              out[2 * QH * D + 3 * D + 2], out[2 * QH * D + 3 * D + 3]);

  block_tables[1] = 7;  // a page that does not exist: rejected with a message, nothing written
  const rpa_status status = rpa_attention(ctx.get(), &args);
  std::printf("bad block table: %s: %s\n", rpa_status_string(status), rpa_last_error());
  return status == RPA_STATUS_INVALID_ARGUMENT ? 0 : 1;
}
