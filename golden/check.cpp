#include "golden/check.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <stdexcept>

#include "golden/variant.h"

namespace rpa::golden {
namespace {

constexpr double kLog2e = 1.4426950408889634;
// Rows that get the full search (every position near theirs in every sequence); later rows are tried
// only against what explained earlier ones, so a badly broken kernel is still diagnosed quickly.
constexpr int kFullSearches = 64;
constexpr int64_t kMaxShift = 16;
// Right to about three decimal digits: what TF32 products (10-bit mantissas) or a P rounded to bf16 give.
constexpr Tolerance kLoose{4e-3, 1.6e-2};

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string num(double x) {
  char text[32];
  std::snprintf(text, sizeof text, "%.3g", x);
  return text;
}

std::string range_text(int64_t a, int64_t b) { return a == b ? std::to_string(a) : std::to_string(a) + "-" + std::to_string(b); }

// "0-3, 6" for a sorted list.
std::string list_text(const std::vector<int64_t>& values, int64_t all) {
  if (static_cast<int64_t>(values.size()) == all) return "all " + std::to_string(all);
  std::string s;
  for (size_t i = 0; i < values.size();) {
    size_t j = i;
    while (j + 1 < values.size() && values[j + 1] == values[j] + 1) ++j;
    s += (s.empty() ? "" : ", ") + range_text(values[i], values[j]);
    i = j + 1;
  }
  return s;
}

// One hypothesis with its parameters: the row recomputed under `variant` as a query of sequence `seq`
// (-1: its own) at its nominal position there plus `shift`; or (copy) the reference's row + row_offset.
struct Trial {
  Trial(std::string h, std::string g) : hypothesis(std::move(h)), group(std::move(g)) {}
  std::string hypothesis, group;
  Variant variant;
  int64_t seq = -1, shift = 0, row_offset = 0;
  bool copy = false, lse_base2 = false;
};

class Diagnosis {
 public:
  Diagnosis(const Case& c, const Candidate& cand, const Candidate& ref, Tolerance tol, const std::vector<RowPlace>& places)
      : c_(c), cand_(cand), ref_(ref), tol_(tol), places_(places), QH_(c.q_heads()), D_(c.head_dim()) {
    const int64_t S = c.num_seqs;
    for (int64_t s = 0; s < S; ++s) {
      qsl_.push_back(c.query_start_loc.int_at(s));
      q_len_.push_back(c.query_start_loc.int_at(s + 1) - c.query_start_loc.int_at(s));
      ctx_.push_back(c.context_lens.int_at(s));
    }
    build_parameter_trials();
  }

  Finding explain(int64_t row, bool output_wrong) {
    Finding f{row, "unexplained", "no hypothesis reproduces this row", "unexplained"};
    if (places_[row].seq < 0) {
      f.hypothesis = f.group = "padding_row_written";
      f.detail = padding_detail(row);
      return f;
    }
    if (!output_wrong) {  // only the lse differs
      Trial t("lse_base2", "lse_base2");
      t.lse_base2 = true;
      if (holds(t, row)) return found(t, row);
      f.detail = "the lse differs and no hypothesis reproduces it";
      return f;
    }
    if (all_zero(row)) {
      f.hypothesis = f.group = "row_left_zero";
      f.detail = "the row holds zeros: it was not computed";
      return f;
    }
    for (const Trial& t : recent_)
      if (holds(t, row)) return found(t, row);
    for (const Trial& t : parameter_trials_)
      if (holds(t, row)) return found(t, row);
    if (near_reference(row)) {
      f.hypothesis = f.group = "reduced_precision";
      f.detail = "within " + num(kLoose.atol) + " + " + num(kLoose.rtol) +
                 " * |ref| of the reference: products in reduced precision (TF32 dots, or P rounded to 16 bits "
                 "before P.V)";
      return f;
    }
    if (full_searches_ >= kFullSearches) {
      f.detail = "not searched further (the first " + std::to_string(kFullSearches) + " such rows were)";
      return f;
    }
    ++full_searches_;
    for (const Trial& t : search_trials(row))
      if (holds(t, row)) return found(t, row);
    return f;
  }

 private:
  void build_parameter_trials() {
    auto add = [&](const std::string& hypothesis, const std::string& group, auto&& set) {
      Trial t(hypothesis, group);
      set(t.variant);
      parameter_trials_.push_back(t);
    };
    const int64_t W = c_.width(), KVH = c_.kv_heads();
    // NaN first: rows holding NaN/Inf are explained by where it came from.
    std::vector<int64_t> blocks;  // powers of 2 below the width, and the width (a kernel reading the whole row)
    for (int64_t b = 1; b < W; b *= 2) blocks.push_back(b);
    blocks.push_back(W);
    for (int64_t b : blocks)
      add("nan_from_masked_slots", "nan_from_masked_slots " + std::to_string(b), [&](Variant& v) { v.leak_block = b; });
    for (int64_t b = 2; b < W; b *= 2)
      if (W % b)
        add("nan_from_masked_slots", "nan_from_masked_slots clamped " + std::to_string(b), [&](Variant& v) {
          v.leak_block = b;
          v.table_block = b;
        });
    for (int64_t b = 1; b < W; b *= 2)
      add("nan_from_empty_block", "nan_from_empty_block " + std::to_string(b), [&](Variant& v) { v.empty_block_nan = b; });
    add("scale_missing", "scale_missing", [](Variant& v) { v.scale_power = 0; });
    add("scale_twice", "scale_twice", [](Variant& v) { v.scale_power = 2; });
    if (c_.logits_soft_cap > 0) {
      add("soft_cap_ignored", "soft_cap_ignored", [](Variant& v) { v.cap = Variant::Cap::kIgnored; });
      add("soft_cap_before_scale", "soft_cap_before_scale", [](Variant& v) { v.cap = Variant::Cap::kBeforeScale; });
    }
    if (c_.softmax_aux.present()) {
      add("sinks_ignored", "sinks_ignored", [](Variant& v) { v.sinks = Variant::Sinks::kIgnored; });
      add("sinks_scaled", "sinks_scaled", [](Variant& v) { v.sinks = Variant::Sinks::kScaled; });
      if (c_.logits_soft_cap > 0)
        add("sinks_capped", "sinks_capped", [](Variant& v) { v.sinks = Variant::Sinks::kCapped; });
    }
    if (c_.sliding_window > 0) {
      add("window_off_by_one", "window_off_by_one -1", [](Variant& v) { v.window_delta = -1; });
      add("window_off_by_one", "window_off_by_one +1", [](Variant& v) { v.window_delta = 1; });
    }
    if (KVH > 1 && QH_ > KVH) add("gqa_interleaved", "gqa_interleaved", [](Variant& v) { v.gqa_interleaved = true; });
    add("kv_swapped", "kv_swapped", [](Variant& v) { v.kv_swapped = true; });
    for (int64_t b = 1; b < W; b *= 2)
      if (W % b) add("clamped_block_table", "clamped_block_table " + std::to_string(b), [&](Variant& v) { v.table_block = b; });
  }

  std::vector<Trial> search_trials(int64_t row) const {
    std::vector<Trial> trials;
    const int64_t own = places_[row].seq;
    for (int64_t k = 1; k <= kMaxShift; ++k)
      for (int64_t shift : {k, -k}) {
        Trial t("position_shift", "position_shift " + std::to_string(shift));
        t.shift = shift;
        trials.push_back(t);
      }
    for (int64_t other = 0; other < c_.tokens(); ++other)
      if (other != row) {
        Trial t("other_row", "other_row " + std::to_string(other - row));
        t.copy = true;
        t.row_offset = other - row;
        trials.push_back(t);
      }
    for (int64_t s = 0; s < c_.num_seqs; ++s)
      if (s != own)
        for (int64_t k = 0; k <= kMaxShift; ++k)
          for (int64_t shift : {k, -k}) {
            if (k == 0 && shift < 0) continue;
            Trial t("other_sequence", "other_sequence " + std::to_string(s) + " " + std::to_string(shift));
            t.seq = s;
            t.shift = shift;
            trials.push_back(t);
          }
    return trials;
  }

  bool near_reference(int64_t row) const {
    for (int64_t i = 0; i < QH_ * D_; ++i) {
      const double want = ref_.output.at(row * QH_ * D_ + i), got = cand_.output.at(row * QH_ * D_ + i);
      if (!(std::abs(got - want) <= kLoose.atol + kLoose.rtol * std::abs(want))) return false;
    }
    return true;
  }

  bool finite_row(int64_t row) const {
    for (int64_t i = 0; i < QH_ * D_; ++i)
      if (!std::isfinite(cand_.output.at(row * QH_ * D_ + i))) return false;
    return true;
  }

  bool all_zero(int64_t row) const {
    for (int64_t i = 0; i < QH_ * D_; ++i)
      if (cand_.output.at(row * QH_ * D_ + i) != 0.0f) return false;
    return true;
  }

  // The row's position if it belonged to sequence s.
  int64_t nominal(int64_t row, int64_t s) const { return ctx_[s] - q_len_[s] + (row - qsl_[s]); }

  bool close(double want, float got) const {
    if (std::isnan(want)) return !std::isfinite(got);
    if (std::isinf(want)) return got == want;
    if (!std::isfinite(got)) return false;
    return std::abs(double(got) - want) <= tol_.atol + tol_.rtol * std::abs(want);
  }

  bool holds(const Trial& t, int64_t row) const {
    const int64_t base = row * QH_ * D_;
    if (t.lse_base2) {
      for (int64_t h = 0; h < QH_; ++h)
        if (!close(ref_.lse.at(row * QH_ + h) * kLog2e, cand_.lse.at(row * QH_ + h))) return false;
      return true;
    }
    if (t.copy) {
      const int64_t other = row + t.row_offset;
      if (other < 0 || other >= c_.tokens()) return false;
      for (int64_t i = 0; i < QH_ * D_; ++i)
        if (!close(ref_.output.at(other * QH_ * D_ + i), cand_.output.at(base + i))) return false;
      return true;
    }
    if (t.seq == places_[row].seq) return false;  // its own sequence is position_shift's
    if ((t.variant.leak_block || t.variant.empty_block_nan) && finite_row(row)) return false;  // NaN trials
    const int64_t seq = t.seq < 0 ? places_[row].seq : t.seq;
    const int64_t pos = nominal(row, seq) + t.shift;
    if (pos < 0 || pos >= ctx_[seq] + kMaxShift) return false;
    std::vector<double> out(static_cast<size_t>(D_));
    for (int64_t h = 0; h < QH_; ++h) {  // head by head: most trials fail on the first
      variant_row(c_, t.variant, row, seq, pos, h, out.data());
      for (int64_t d = 0; d < D_; ++d)
        if (!close(out[d], cand_.output.at(base + h * D_ + d))) return false;
    }
    return true;
  }

  Finding found(const Trial& t, int64_t row) {
    if (std::find_if(recent_.begin(), recent_.end(), [&](const Trial& r) { return r.group == t.group; }) == recent_.end())
      recent_.insert(recent_.begin(), t);
    return {row, t.hypothesis, detail(t, row), t.group};
  }

  std::string detail(const Trial& t, int64_t row) const {
    const Variant& v = t.variant;
    const std::string& h = t.hypothesis;
    if (h == "nan_from_masked_slots")
      return "NaN/Inf held in masked or unused KV slots enters as 0 * value (the kernel reads whole blocks of " +
             std::to_string(v.leak_block) + " page(s)" + (v.table_block ? " through clamped table slices" : "") + ")";
    if (h == "nan_from_empty_block")
      return "an online softmax over blocks of " + std::to_string(v.empty_block_nan) +
             " page(s) from key 0 starts with a block holding no visible key: exp(-inf - -inf) = NaN";
    if (h == "scale_missing") return "softmax_scale not applied";
    if (h == "scale_twice") return "softmax_scale applied twice";
    if (h == "soft_cap_ignored") return "logits_soft_cap not applied";
    if (h == "soft_cap_before_scale") return "soft cap applied to q.k before the scale";
    if (h == "sinks_ignored") return "the sinks left out of the denominator";
    if (h == "sinks_scaled") return "the sinks multiplied by softmax_scale like scores";
    if (h == "sinks_capped") return "the sinks scaled and soft-capped like scores";
    if (h == "window_off_by_one")
      return v.window_delta < 0 ? "the window holds W-1 keys (FlashInfer's window_left = W convention)"
                                : "the window holds W+1 keys (window_left = W taken as W keys before the query)";
    if (h == "gqa_interleaved") return "q head h reads kv head h % KVH instead of h / (QH/KVH)";
    if (h == "kv_swapped") return "K and V swapped";
    if (h == "clamped_block_table")
      return "keys read through block-table slices of " + std::to_string(v.table_block) +
             " entries clamped at the table's width " + std::to_string(c_.width());
    if (h == "position_shift")
      return "computed at position " + std::to_string(nominal(row, places_[row].seq) + t.shift) + " instead of " +
             std::to_string(nominal(row, places_[row].seq)) +
             (t.shift > 0 ? " (sees " + std::to_string(t.shift) + " future key(s))"
                          : " (misses its own key" + std::string(t.shift < -1 ? " and earlier ones)" : ")"));
    if (h == "other_row") {
      const int64_t other = row + t.row_offset;
      const RowPlace& p = places_[other];
      return "holds row " + std::to_string(other) + "'s result" +
             (p.seq >= 0 ? " (sequence " + std::to_string(p.seq) + ", query " + std::to_string(p.query) + ")" : "");
    }
    if (h == "other_sequence")
      return "its query computed against sequence " + std::to_string(t.seq) + "'s keys at position " +
             std::to_string(nominal(row, t.seq) + t.shift);
    if (h == "lse_base2") return "lse is log2 of the denominator (natural lse * log2(e))";
    return "";
  }

  std::string padding_detail(int64_t row) const {
    // A metadata sequence beyond num_seqs may claim the row: a kernel that ignores num_seqs computes it.
    const int64_t S = c_.seqs();
    for (int64_t s = c_.num_seqs; s < S; ++s)
      if (row >= c_.query_start_loc.int_at(s) && row < c_.query_start_loc.int_at(s + 1))
        return "no processed sequence covers this row (sequence " + std::to_string(s) +
               " claims it, beyond num_seqs = " + std::to_string(c_.num_seqs) + "): it must be 0";
    return "no processed sequence covers this row: it must be 0";
  }

  const Case& c_;
  const Candidate &cand_, &ref_;
  Tolerance tol_;
  const std::vector<RowPlace>& places_;
  int64_t QH_, D_;
  std::vector<int64_t> qsl_, q_len_, ctx_;
  std::vector<Trial> parameter_trials_, recent_;
  int full_searches_ = 0;
};

}  // namespace

Tolerance default_tolerance(rpa_dtype dtype) {
  switch (dtype) {
    case RPA_DTYPE_F16: return {1e-3, 2e-3};
    case RPA_DTYPE_BF16: return {1e-2, 1.6e-2};
    default: return {2e-5, 2e-5};
  }
}

const std::vector<std::string>& hypothesis_names() {
  static const std::vector<std::string> names{
      "padding_row_written", "row_left_zero", "nan_from_masked_slots", "nan_from_empty_block", "scale_missing", "scale_twice",
      "soft_cap_ignored", "soft_cap_before_scale", "sinks_ignored", "sinks_scaled", "sinks_capped",
      "window_off_by_one", "gqa_interleaved", "kv_swapped", "clamped_block_table", "reduced_precision", "position_shift",
      "other_row", "other_sequence", "lse_base2"};
  return names;
}

Report check(const Case& c, const Candidate& cand, std::optional<Tolerance> tolerance) {
  if (cand.output.shape != c.queries.shape)
    throw std::invalid_argument("output: shape " + shape_text(cand.output.shape) + " differs from the case's queries " +
                                shape_text(c.queries.shape));
  const std::vector<int64_t> lse_shape{c.queries.shape[0], c.queries.shape[1]};
  if (cand.lse.present() && cand.lse.shape != lse_shape)
    throw std::invalid_argument("lse: shape " + shape_text(cand.lse.shape) + " differs from " + shape_text(lse_shape));
  const Candidate ref = run_case(c, RPA_BACKEND_REFERENCE, RPA_DTYPE_F32, true);

  Report r;
  r.tolerance = tolerance ? *tolerance : default_tolerance(cand.output.dtype);
  r.lse_checked = cand.lse.present();
  const int64_t T = c.tokens(), QH = c.q_heads(), D = c.head_dim();
  r.rows = T;
  r.q_heads = QH;
  r.elements = T * QH * D;

  std::vector<RowPlace> places(static_cast<size_t>(T));
  for (int64_t s = 0; s < c.num_seqs; ++s) {
    const int64_t first = c.query_start_loc.int_at(s), last = c.query_start_loc.int_at(s + 1);
    for (int64_t t = first; t < last; ++t)
      places[t] = {s, t - first, c.context_lens.int_at(s) - (last - first) + (t - first)};
  }
  auto element_wrong = [&](double want, float got, bool zero_row) {
    if (zero_row) return got != 0.0f;
    if (std::isinf(want)) return got != want;
    if (!std::isfinite(got)) return true;
    return std::abs(double(got) - want) > r.tolerance.atol + r.tolerance.rtol * std::abs(want);
  };

  std::vector<std::vector<int64_t>> wrong_heads(static_cast<size_t>(T));
  std::vector<bool> output_wrong(static_cast<size_t>(T), false);
  for (int64_t t = 0; t < T; ++t) {
    const bool zero_row = places[t].seq < 0;
    for (int64_t h = 0; h < QH; ++h) {
      bool head_wrong = false;
      for (int64_t d = 0; d < D; ++d) {
        const int64_t i = (t * QH + h) * D + d;
        const double want = ref.output.at(i);
        const float got = cand.output.at(i);
        if (std::isfinite(got)) {
          const double diff = std::abs(double(got) - want);
          r.max_abs_error = std::max(r.max_abs_error, diff);
          if (std::abs(want) > r.tolerance.atol) r.max_rel_error = std::max(r.max_rel_error, diff / std::abs(want));
        }
        if (element_wrong(want, got, zero_row)) {
          ++r.wrong_elements;
          head_wrong = true;
          output_wrong[t] = true;
        }
      }
      if (r.lse_checked) {
        const double want = ref.lse.at(t * QH + h);
        const float got = cand.lse.at(t * QH + h);
        if (zero_row ? got != -std::numeric_limits<float>::infinity() : element_wrong(want, got, false)) head_wrong = true;
      }
      if (head_wrong) wrong_heads[t].push_back(h);
    }
    if (!wrong_heads[t].empty()) r.wrong_rows.push_back(t);
  }
  r.pass = r.wrong_rows.empty();

  for (int64_t t : r.wrong_rows) {
    const bool joins = !r.runs.empty() && r.runs.back().last == t - 1 && places[t - 1].seq == places[t].seq;
    if (!joins) r.runs.push_back({t, t, places[t], places[t], {}});
    Run& run = r.runs.back();
    run.last = t;
    run.last_place = places[t];
    std::vector<int64_t> heads;
    std::set_union(run.heads.begin(), run.heads.end(), wrong_heads[t].begin(), wrong_heads[t].end(), std::back_inserter(heads));
    run.heads = heads;
  }
  Diagnosis diagnosis(c, cand, ref, r.tolerance, places);
  for (int64_t t : r.wrong_rows) r.findings.push_back(diagnosis.explain(t, output_wrong[t]));
  return r;
}

nlohmann::json Report::to_json() const {
  nlohmann::json j;
  j["pass"] = pass;
  j["tolerance"] = {{"atol", tolerance.atol}, {"rtol", tolerance.rtol}};
  j["lse_checked"] = lse_checked;
  j["rows"] = rows;
  j["elements"] = elements;
  j["max_abs_error"] = max_abs_error;
  j["max_rel_error"] = max_rel_error;
  j["wrong_elements"] = wrong_elements;
  j["wrong_rows"] = wrong_rows;
  j["runs"] = nlohmann::json::array();
  for (const Run& run : runs) {
    nlohmann::json entry = {{"first_row", run.first}, {"last_row", run.last}, {"heads", run.heads}};
    if (run.first_place.seq >= 0) {
      entry["sequence"] = run.first_place.seq;
      entry["first_query"] = run.first_place.query;
      entry["last_query"] = run.last_place.query;
      entry["first_position"] = run.first_place.position;
      entry["last_position"] = run.last_place.position;
    } else {
      entry["sequence"] = nullptr;
    }
    j["runs"].push_back(entry);
  }
  j["diagnosis"] = nlohmann::json::array();
  std::map<std::string, int64_t> counts;
  std::vector<int64_t> unexplained;
  for (const Finding& f : findings) {
    j["diagnosis"].push_back({{"row", f.row}, {"hypothesis", f.hypothesis}, {"detail", f.detail}});
    ++counts[f.hypothesis];
    if (f.hypothesis == "unexplained") unexplained.push_back(f.row);
  }
  j["hypothesis_counts"] = counts;
  j["unexplained_rows"] = unexplained;
  return j;
}

std::string Report::summary() const {
  if (pass) return "pass";
  std::map<std::string, int64_t> counts;
  for (const Finding& f : findings) ++counts[f.hypothesis];
  std::string s = "fail: " + std::to_string(wrong_rows.size()) + " wrong row(s) (";
  bool first = true;
  for (const auto& [name, count] : counts) {
    s += (first ? "" : ", ") + name + " " + std::to_string(count);
    first = false;
  }
  return s + ")";
}

bool Report::same_detail(size_t first, size_t last) const {
  for (size_t i = first + 1; i <= last; ++i)
    if (findings[i].detail != findings[first].detail) return false;
  return true;
}

std::string Report::text() const {
  std::string s = "tolerance: |got - ref| <= " + num(tolerance.atol) + " + " + num(tolerance.rtol) + " * |ref|" +
                  (lse_checked ? "; lse checked" : "; no lse") + "\n";
  s += "max abs error " + num(max_abs_error) + ", max rel error " + num(max_rel_error) + " (finite elements)\n";
  if (pass) return s + "PASS: all " + std::to_string(rows) + " rows within tolerance\n";
  s += "FAIL: " + std::to_string(wrong_rows.size()) + " of " + std::to_string(rows) + " rows wrong (" +
       std::to_string(wrong_elements) + " of " + std::to_string(elements) + " output elements)\n";
  size_t f = 0;
  for (const Run& run : runs) {
    s += std::string(run.first == run.last ? "  row " : "  rows ") + range_text(run.first, run.last) + ": ";
    if (run.first_place.seq >= 0)
      s += "sequence " + std::to_string(run.first_place.seq) + ", queries " +
           range_text(run.first_place.query, run.last_place.query) + ", positions " +
           range_text(run.first_place.position, run.last_place.position);
    else
      s += "no sequence (padding)";
    s += ", heads " + list_text(run.heads, q_heads) + "\n";
    // The run's findings, consecutive rows of one group together.
    while (f < findings.size() && findings[f].row <= run.last) {
      size_t g = f;
      while (g + 1 < findings.size() && findings[g + 1].row <= run.last && findings[g + 1].group == findings[f].group &&
             findings[g + 1].row == findings[g].row + 1)
        ++g;
      s += "    " + (f == g ? "row " + std::to_string(findings[f].row)
                            : "rows " + range_text(findings[f].row, findings[g].row)) +
           ": " + findings[f].hypothesis + ": " + findings[f].detail + (same_detail(f, g) ? "" : " (first row)") + "\n";
      f = g + 1;
    }
  }
  std::map<std::string, int64_t> counts;
  for (const Finding& finding : findings) ++counts[finding.hypothesis];
  s += "diagnosis:";
  for (const auto& [name, count] : counts) s += " " + name + " " + std::to_string(count) + " row(s);";
  s.back() = '\n';
  return s;
}

}  // namespace rpa::golden
