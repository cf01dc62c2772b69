#include "golden/variant.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace rpa::golden {

double variant_row(const Case& c, const Variant& v, int64_t row, int64_t seq, int64_t pos, int64_t head, double* out) {
  const double inf = std::numeric_limits<double>::infinity();
  const int64_t D = c.head_dim(), QH = c.q_heads(), KVH = c.kv_heads(), ps = c.page_size(), W = c.width();
  const int64_t P = c.num_pages();
  const int64_t kv_head = v.gqa_interleaved ? head % KVH : head / (QH / KVH);
  const int64_t context_len = c.context_lens.int_at(seq);
  const double scale = std::pow(c.scale(), v.scale_power);
  const double cap = v.cap == Variant::Cap::kIgnored ? 0 : c.logits_soft_cap;
  const int64_t window = c.sliding_window > 0 ? std::max<int64_t>(1, c.sliding_window + v.window_delta) : 0;
  const int64_t first_key = window > 0 ? std::max<int64_t>(0, pos - window + 1) : 0;
  const int64_t last_key = std::min(pos, context_len - 1);
  std::fill(out, out + D, 0.0);

  // The page of key j: through the table, or through a clamped slice of table_block entries.
  auto page_of = [&](int64_t j) -> int64_t {
    int64_t entry = j / ps;
    if (v.table_block > 0 && W > v.table_block) {
      const int64_t start = entry / v.table_block * v.table_block;
      entry -= start - std::min(start, W - v.table_block);
    }
    if (entry >= W) return -1;
    const int64_t page = c.block_tables.int_at(seq * W + entry);
    return page >= 0 && page < P ? page : -1;
  };
  auto k_at = [&](int64_t page, int64_t slot, int64_t d) {
    return v.kv_swapped ? c.v(page, slot, kv_head, d) : c.k(page, slot, kv_head, d);
  };
  auto v_at = [&](int64_t page, int64_t slot, int64_t d) {
    return v.kv_swapped ? c.k(page, slot, kv_head, d) : c.v(page, slot, kv_head, d);
  };
  auto capped = [&](double x) { return cap > 0 ? cap * std::tanh(x / cap) : x; };

  if (v.empty_block_nan > 0 && first_key <= last_key && first_key >= v.empty_block_nan * ps) {
    std::fill(out, out + D, std::numeric_limits<double>::quiet_NaN());
    return std::numeric_limits<double>::quiet_NaN();
  }

  std::vector<double> scores;
  std::vector<int64_t> pages;
  for (int64_t j = first_key; j <= last_key; ++j) {
    const int64_t page = page_of(j);
    pages.push_back(page);
    if (page < 0) {
      scores.push_back(-inf);
      continue;
    }
    double dot = 0;
    for (int64_t d = 0; d < D; ++d) dot += double(c.queries.at((row * QH + head) * D + d)) * k_at(page, j % ps, d);
    scores.push_back(v.cap == Variant::Cap::kBeforeScale ? scale * capped(dot) : capped(scale * dot));
  }
  std::vector<double> sinks;
  if (c.softmax_aux.present() && v.sinks != Variant::Sinks::kIgnored) {
    const int64_t sink_heads = c.softmax_aux.shape[0], n = c.softmax_aux.shape[1];
    const int64_t sink_row = sink_heads == 1 ? 0 : sink_heads == QH ? head : head / (QH / KVH);
    for (int64_t i = 0; i < n; ++i) {
      double sink = c.softmax_aux.at(sink_row * n + i);
      if (v.sinks != Variant::Sinks::kContract) sink *= scale;
      if (v.sinks == Variant::Sinks::kCapped) sink = capped(sink);
      sinks.push_back(sink);
    }
  }
  double max_logit = -inf;
  for (double x : scores) max_logit = std::max(max_logit, x);
  for (double x : sinks) max_logit = std::max(max_logit, x);
  if (max_logit == -inf) return -inf;
  double denominator = 0;
  for (double x : scores) denominator += std::exp(x - max_logit);
  for (double x : sinks) denominator += std::exp(x - max_logit);
  for (size_t n = 0; n < scores.size(); ++n) {
    if (pages[n] < 0) continue;
    const double weight = std::exp(scores[n] - max_logit) / denominator;
    const int64_t j = first_key + static_cast<int64_t>(n);
    for (int64_t d = 0; d < D; ++d) out[d] += weight * v_at(pages[n], j % ps, d);
  }
  if (v.leak_block > 0) {
    // The kernel multiplies every slot of the blocks it reads by its weight, 0 where masked: 0 * NaN.
    const int64_t span = v.leak_block * ps;
    const int64_t end = (context_len + span - 1) / span * span;
    for (int64_t j = 0; j < end; ++j) {
      if (j >= first_key && j <= last_key) continue;
      const int64_t page = page_of(j);
      if (page < 0) continue;
      for (int64_t d = 0; d < D; ++d) out[d] += 0.0 * v_at(page, j % ps, d);
    }
  }
  return max_logit + std::log(denominator);
}

}  // namespace rpa::golden
