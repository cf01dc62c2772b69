#include "reference/reference.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/dtype.h"

namespace rpa::reference {
namespace {

double load(const void* data, rpa_dtype dtype, int64_t index) { return load_float(data, dtype, index); }

// Element offset of key/value token j of sequence s for kv head h in one cache view.
int64_t kv_offset(const rpa_problem& p, const rpa_kv_view& view, int32_t s, int64_t j, int64_t h) {
  const int64_t page = p.block_tables[s * p.block_table_stride + j / p.page_size];
  return page * view.page_stride + (j % p.page_size) * view.slot_stride + h * view.head_stride;
}

void write_row(const rpa_problem& p, int64_t token, int64_t head, const std::vector<double>& row, double lse) {
  const int64_t base = token * p.out_token_stride + head * p.out_head_stride;
  for (int64_t d = 0; d < p.head_dim; ++d) store_double(p.out, p.out_dtype, base + d, row[d]);  // one rounding
  if (p.lse) p.lse[token * p.lse_token_stride + head * p.lse_head_stride] = static_cast<float>(lse);
}

// The raw sink logits of q head `head`.
std::vector<double> sinks_of(const rpa_problem& p, int64_t head) {
  std::vector<double> sinks;
  if (!p.sinks) return sinks;
  int64_t row = 0;  // one shared row
  if (p.sink_heads == p.num_q_heads) row = head;
  else if (p.sink_heads == p.num_kv_heads) row = head / (p.num_q_heads / p.num_kv_heads);
  for (int64_t n = 0; n < p.sinks_per_head; ++n)
    sinks.push_back(load(p.sinks, p.sink_dtype, row * p.sink_head_stride + n * p.sink_stride));
  return sinks;
}

}  // namespace

void attention(const rpa_problem& p) {
  const double inf = std::numeric_limits<double>::infinity();
  const std::vector<double> zeros(p.head_dim, 0.0);
  // Rows no processed sequence covers are 0 (lse -inf); covered rows are overwritten below.
  for (int64_t t = 0; t < p.num_tokens; ++t)
    for (int64_t h = 0; h < p.num_q_heads; ++h) write_row(p, t, h, zeros, -inf);

  const int64_t group = p.num_q_heads / p.num_kv_heads;
  for (int32_t s = 0; s < p.num_seqs; ++s) {
    const int64_t context_len = p.context_lens[s];
    const int64_t first_row = p.query_start_loc[s];
    const int64_t q_len = p.query_start_loc[s + 1] - first_row;
    for (int64_t i = 0; i < q_len; ++i) {
      const int64_t pos = context_len - q_len + i;
      // Visible keys: j <= pos (which is < context_len) and, with a window W, j > pos - W.
      const int64_t first_key = p.sliding_window > 0 ? std::max<int64_t>(0, pos - p.sliding_window + 1) : 0;
      for (int64_t h = 0; h < p.num_q_heads; ++h) {
        const int64_t kv_head = h / group;
        const float k_scale = p.k_scale[kv_head * p.k_scale_stride], v_scale = p.v_scale[kv_head * p.v_scale_stride];
        const int64_t q_base = (first_row + i) * p.query_token_stride + h * p.query_head_stride;

        std::vector<double> scores;
        for (int64_t j = first_key; j <= pos; ++j) {
          const int64_t k_base = kv_offset(p, p.k, s, j, kv_head);
          double dot = 0.0;
          for (int64_t d = 0; d < p.head_dim; ++d)
            dot += load(p.queries, p.query_dtype, q_base + d) * load_kv(p.k.data, p.kv_dtype, k_base + d, k_scale);
          double score = p.softmax_scale * dot;
          if (p.logits_soft_cap > 0) score = p.logits_soft_cap * std::tanh(score / p.logits_soft_cap);
          scores.push_back(score);
        }
        const std::vector<double> sinks = sinks_of(p, h);

        double max_logit = -inf;
        for (double x : scores) max_logit = std::max(max_logit, x);
        for (double x : sinks) max_logit = std::max(max_logit, x);
        if (max_logit == -inf) continue;  // nothing visible and no sink: the zero row stands

        double denominator = 0.0;
        for (double x : scores) denominator += std::exp(x - max_logit);
        for (double x : sinks) denominator += std::exp(x - max_logit);

        std::vector<double> row(p.head_dim, 0.0);
        for (size_t n = 0; n < scores.size(); ++n) {
          const double weight = std::exp(scores[n] - max_logit) / denominator;
          const int64_t v_base = kv_offset(p, p.v, s, first_key + static_cast<int64_t>(n), kv_head);
          for (int64_t d = 0; d < p.head_dim; ++d)
            row[d] += weight * load_kv(p.v.data, p.kv_dtype, v_base + d, v_scale);
        }
        write_row(p, first_row + i, h, row, max_logit + std::log(denominator));
      }
    }
  }
}

void write_kv(const rpa_write_problem& w) {
  for (int64_t i = 0; i < w.num_tokens; ++i) {
    const int32_t slot = w.slots[i];
    if (slot < 0) continue;
    const int64_t page = slot / w.page_size, offset = slot % w.page_size;
    for (int64_t h = 0; h < w.num_kv_heads; ++h) {
      const float k_scale = w.k_scale[h * w.k_scale_stride], v_scale = w.v_scale[h * w.v_scale_stride];
      const int64_t key = i * w.key_token_stride + h * w.key_head_stride;
      const int64_t value = i * w.value_token_stride + h * w.value_head_stride;
      const int64_t k_base = page * w.k.page_stride + offset * w.k.slot_stride + h * w.k.head_stride;
      const int64_t v_base = page * w.v.page_stride + offset * w.v.slot_stride + h * w.v.head_stride;
      for (int64_t d = 0; d < w.head_dim; ++d) {
        store_kv(w.k.data, w.kv_dtype, k_base + d, load_float(w.keys, w.key_dtype, key + d), k_scale);
        store_kv(w.v.data, w.kv_dtype, v_base + d, load_float(w.values, w.value_dtype, value + d), v_scale);
      }
    }
  }
}

}  // namespace rpa::reference
