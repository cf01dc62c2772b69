#include "tools/case_commands.h"

#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <stdexcept>

#include "golden/check.h"
#include "golden/generate.h"
#include "golden/suite.h"

namespace {

using namespace rpa::golden;

const std::map<std::string, rpa_dtype> kFloatDtypes{{"f32", RPA_DTYPE_F32}, {"f16", RPA_DTYPE_F16}, {"bf16", RPA_DTYPE_BF16}};

// Runs a command body with the exit statuses of the issue: bad input (files, shapes, the library's
// validation) is 2, a failed check 1.
template <typename Body>
void guarded(const char* command, Body&& body) {
  int status = 0;
  try {
    status = body();
  } catch (const FormatError& e) {
    std::fprintf(stderr, "rpa %s: malformed file: %s\n", command, e.what());
    status = 2;
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "rpa %s: %s\n", command, e.what());
    status = 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rpa %s: %s\n", command, e.what());
    status = 2;
  }
  if (status != 0) throw CLI::RuntimeError(status);
}

// Loads a file, naming it in any error.
template <typename Loader>
auto load(const std::string& path, Loader&& loader) {
  try {
    return loader(path);
  } catch (const FormatError& e) {
    throw FormatError(path + ": " + e.what());
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(path + ": " + e.what());
  }
}

void write_json(const std::string& path, const nlohmann::json& j) {
  std::ofstream out(path);
  out << j.dump(2) << "\n";
  if (!out) throw std::runtime_error("cannot write " + path);
}

std::optional<Tolerance> tolerance_of(const CLI::Option* atol_option, const CLI::Option* rtol_option, double atol,
                                      double rtol, rpa_dtype dtype) {
  if (!atol_option->count() && !rtol_option->count()) return std::nullopt;
  Tolerance t = default_tolerance(dtype);
  if (atol_option->count()) t.atol = atol;
  if (rtol_option->count()) t.rtol = rtol;
  return t;
}

std::string tolerance_help() {
  std::string s = "A row is wrong when any element differs by more than atol + rtol*|ref|, is NaN/Inf where the "
                  "reference is finite, or is non-zero in a row no processed sequence covers; lse likewise when the "
                  "candidate has one. Defaults by the candidate output's dtype:";
  for (const auto& [name, dtype] : kFloatDtypes) {
    const Tolerance t = default_tolerance(dtype);
    char text[96];
    std::snprintf(text, sizeof text, " %s atol %g rtol %g;", name.c_str(), t.atol, t.rtol);
    s += text;
  }
  s.back() = '.';
  return s;
}

void register_make_case(CLI::App& app) {
  struct Options {
    std::string out, preset, q_dtype = "f32", kv_dtype = "f32";
    Spec spec;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("make-case", "Write a random case (inputs of one attention call) as safetensors: "
                                                  "a preset, or explicit shapes and lengths, from a seed");
  cmd->add_option("OUT", o->out, "The case file to write (.safetensors)")->required();
  cmd->add_option("--preset", o->preset, "decode, prefill, mixed, long, window, sinks, softcap or gqa (other "
                                         "options given change it)")->check(CLI::IsMember(preset_names()));
  std::vector<CLI::Option*> given;
  auto opt = [&](const char* name, auto& value, const char* help) {
    CLI::Option* option = cmd->add_option(name, value, help);
    given.push_back(option);
    return option;
  };
  opt("--q-lens", o->spec.q_lens, "New query tokens of each sequence")->capture_default_str();
  opt("--context-lens", o->spec.context_lens, "Total KV length of each sequence (>= its q_len)")->capture_default_str();
  opt("--q-heads", o->spec.q_heads, "Query heads")->capture_default_str();
  opt("--kv-heads", o->spec.kv_heads, "KV heads")->capture_default_str();
  opt("--head-dim", o->spec.head_dim, "Head dimension")->capture_default_str();
  opt("--page-size", o->spec.page_size, "Tokens per page")->capture_default_str();
  opt("--q-dtype", o->q_dtype, "Queries' dtype: f32, f16, bf16")->check(CLI::IsMember({"f32", "f16", "bf16"}));
  opt("--kv-dtype", o->kv_dtype, "KV dtype: f32, f16, bf16")->check(CLI::IsMember({"f32", "f16", "bf16"}));
  given.push_back(cmd->add_flag("--separate-kv", o->spec.separate_kv, "k_cache and v_cache instead of kv_pages"));
  opt("--window", o->spec.sliding_window, "sliding_window (0 = none)");
  opt("--soft-cap", o->spec.logits_soft_cap, "logits_soft_cap (0 = none)");
  opt("--scale", o->spec.softmax_scale, "softmax_scale (0 = the default 1/sqrt(D))");
  opt("--query-scale", o->spec.query_scale, "Multiplies the random queries (large logits)");
  opt("--sinks", o->spec.sink_heads, "Sinks' first dimension: 1, KVH or QH (0 = none)");
  opt("--sinks-per-head", o->spec.sinks_per_head, "Sinks' second dimension");
  opt("--padding-tokens", o->spec.padding_tokens, "Query rows after the last sequence's");
  opt("--padding-seqs", o->spec.padding_seqs, "Metadata sequences beyond num_seqs (they claim the padding rows)");
  opt("--extra-pages", o->spec.extra_pages, "Pool pages no sequence uses (>= 1; page 0 is one)");
  opt("--table-width", o->spec.table_width, "Block-table columns (0 = the most needed + 1)");
  given.push_back(cmd->add_flag("--nan-unused", o->spec.nan_unused, "NaN in unused pages and in slots past each context"));
  given.push_back(cmd->add_flag("--stale-entries", o->spec.stale_entries,
                                "Block-table entries a sequence does not need point at other sequences' pages"));
  opt("--seed", o->spec.seed, "Random seed")->capture_default_str();
  cmd->callback([o, given] {
    guarded("make-case", [&] {
      Spec spec = o->spec;
      if (!o->preset.empty()) {
        // The preset, then every option given on the command line over it.
        Spec explicit_spec = spec;
        spec = preset(o->preset);
        const Spec defaults;
        for (CLI::Option* option : given) {
          if (!option->count()) continue;
          const std::string name = option->get_name();
          if (name == "--q-lens") spec.q_lens = explicit_spec.q_lens;
          if (name == "--context-lens") spec.context_lens = explicit_spec.context_lens;
          if (name == "--q-heads") spec.q_heads = explicit_spec.q_heads;
          if (name == "--kv-heads") spec.kv_heads = explicit_spec.kv_heads;
          if (name == "--head-dim") spec.head_dim = explicit_spec.head_dim;
          if (name == "--page-size") spec.page_size = explicit_spec.page_size;
          if (name == "--separate-kv") spec.separate_kv = explicit_spec.separate_kv;
          if (name == "--window") spec.sliding_window = explicit_spec.sliding_window;
          if (name == "--soft-cap") spec.logits_soft_cap = explicit_spec.logits_soft_cap;
          if (name == "--scale") spec.softmax_scale = explicit_spec.softmax_scale;
          if (name == "--query-scale") spec.query_scale = explicit_spec.query_scale;
          if (name == "--sinks") spec.sink_heads = explicit_spec.sink_heads;
          if (name == "--sinks-per-head") spec.sinks_per_head = explicit_spec.sinks_per_head;
          if (name == "--padding-tokens") spec.padding_tokens = explicit_spec.padding_tokens;
          if (name == "--padding-seqs") spec.padding_seqs = explicit_spec.padding_seqs;
          if (name == "--extra-pages") spec.extra_pages = explicit_spec.extra_pages;
          if (name == "--table-width") spec.table_width = explicit_spec.table_width;
          if (name == "--nan-unused") spec.nan_unused = explicit_spec.nan_unused;
          if (name == "--stale-entries") spec.stale_entries = explicit_spec.stale_entries;
          if (name == "--seed") spec.seed = explicit_spec.seed;
        }
      }
      spec.query_dtype = kFloatDtypes.at(o->q_dtype);
      spec.kv_dtype = kFloatDtypes.at(o->kv_dtype);
      Case c = make_case(spec);
      // The library validates what make_case drew, so a case file is always one rpa accepts.
      run_case(c, RPA_BACKEND_REFERENCE, RPA_DTYPE_F32, false);
      save_case(o->out, c);
      std::printf("%s: %lld tokens, %lld sequences (num_seqs %d), QH %lld, KVH %lld, D %lld, %lld pages of %lld\n",
                  o->out.c_str(), static_cast<long long>(c.tokens()), static_cast<long long>(c.seqs()), c.num_seqs,
                  static_cast<long long>(c.q_heads()), static_cast<long long>(c.kv_heads()),
                  static_cast<long long>(c.head_dim()), static_cast<long long>(c.num_pages()),
                  static_cast<long long>(c.page_size()));
      return 0;
    });
  });
}

void register_run(CLI::App& app) {
  struct Options {
    std::string case_file, out, backend = "reference", out_dtype;
    bool no_lse = false;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("run", "Compute a case's output (and lse) on a backend into a candidate file");
  cmd->add_option("CASE", o->case_file, "The case file")->required();
  cmd->add_option("-o,--output", o->out, "The candidate file to write")->required();
  cmd->add_option("--backend", o->backend, "reference, simd, gpu or auto")
      ->check(CLI::IsMember({"reference", "simd", "gpu", "auto"}))->capture_default_str();
  cmd->add_option("--out-dtype", o->out_dtype, "Output dtype (default: the queries')")
      ->check(CLI::IsMember({"f32", "f16", "bf16"}));
  cmd->add_flag("--no-lse", o->no_lse, "Leave lse out");
  cmd->callback([o] {
    guarded("run", [&] {
      const Case c = load(o->case_file, load_case);
      rpa_backend backend = RPA_BACKEND_AUTO;
      for (rpa_backend b : {RPA_BACKEND_REFERENCE, RPA_BACKEND_SIMD, RPA_BACKEND_GPU, RPA_BACKEND_AUTO})
        if (o->backend == rpa_backend_string(b)) backend = b;
      const rpa_dtype out_dtype = o->out_dtype.empty() ? c.queries.dtype : kFloatDtypes.at(o->out_dtype);
      save_candidate(o->out, run_case(c, backend, out_dtype, !o->no_lse));
      return 0;
    });
  });
}

void register_check(CLI::App& app) {
  struct Options {
    std::string case_file, candidate, json;
    double atol = 0, rtol = 0;
    bool quiet = false;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "check", "Compare a candidate output with the reference for its case; name the wrong rows and diagnose them. "
               "Exit status 0 within tolerance, 1 not, 2 bad input. " + tolerance_help());
  cmd->add_option("CASE", o->case_file, "The case file")->required();
  cmd->add_option("CANDIDATE", o->candidate, "The candidate file (output [T, QH, D], optional lse [T, QH] F32)")->required();
  CLI::Option* atol = cmd->add_option("--atol", o->atol, "Absolute tolerance (default: by the output's dtype)");
  CLI::Option* rtol = cmd->add_option("--rtol", o->rtol, "Relative tolerance (default: by the output's dtype)");
  cmd->add_option("--json", o->json, "Also write the report as JSON (wrong_rows ascending, pass, runs, diagnosis)");
  cmd->add_flag("-q,--quiet", o->quiet, "Print only the verdict line");
  cmd->callback([o, atol, rtol] {
    guarded("check", [&] {
      const Case c = load(o->case_file, load_case);
      const Candidate candidate = load(o->candidate, load_candidate);
      const Report report = check(c, candidate, tolerance_of(atol, rtol, o->atol, o->rtol, candidate.output.dtype));
      if (!o->json.empty()) {
        nlohmann::json j = report.to_json();
        j["case"] = o->case_file;
        j["candidate"] = o->candidate;
        write_json(o->json, j);
      }
      if (o->quiet) std::printf("%s\n", report.summary().c_str());
      else std::printf("rpa check: %s against %s\n%s", o->candidate.c_str(), o->case_file.c_str(), report.text().c_str());
      return report.pass ? 0 : 1;
    });
  });
}

void register_suite(CLI::App& app) {
  struct Options {
    std::string dir, json;
    double atol = 0, rtol = 0;
  };
  auto o = std::make_shared<Options>();
  CLI::App* suite = app.add_subcommand("suite", "The conformance suite: a fixed, versioned set of cases any kernel "
                                                "can be run through");
  suite->require_subcommand(1);
  CLI::App* make = suite->add_subcommand("make", "Write the suite's cases and manifest.json into DIR");
  make->add_option("DIR", o->dir, "Directory (created if missing)")->required();
  make->callback([o] {
    guarded("suite make", [&] {
      make_suite(o->dir);
      std::printf("%s: %zu cases (suite version %d); write NAME.out.safetensors beside each, then run "
                  "`rpa suite check %s`\n",
                  o->dir.c_str(), suite_cases().size(), kSuiteVersion, o->dir.c_str());
      return 0;
    });
  });
  CLI::App* check_cmd = suite->add_subcommand(
      "check", "Check NAME.out.safetensors beside every case of DIR: one line per case and a summary; exit 1 on any "
               "failure, 2 for a bad suite. " + tolerance_help());
  check_cmd->add_option("DIR", o->dir, "A directory made by `rpa suite make`")->required();
  CLI::Option* atol = check_cmd->add_option("--atol", o->atol, "Absolute tolerance for every case");
  CLI::Option* rtol = check_cmd->add_option("--rtol", o->rtol, "Relative tolerance for every case");
  check_cmd->add_option("--json", o->json, "Also write every case's report as JSON");
  check_cmd->callback([o, atol, rtol] {
    guarded("suite check", [&] {
      // Given tolerances apply to every case whatever its output's dtype (F32 supplies the other's default).
      const std::vector<SuiteResult> results =
          check_suite(o->dir, tolerance_of(atol, rtol, o->atol, o->rtol, RPA_DTYPE_F32));
      int failed = 0;
      for (const SuiteResult& r : results) {
        std::printf("  %-26s %s\n", r.name.c_str(), r.line.c_str());
        failed += !r.pass;
      }
      std::printf("%zu cases: %zu passed, %d failed\n", results.size(), results.size() - failed, failed);
      if (!o->json.empty()) write_json(o->json, suite_json(results));
      return failed ? 1 : 0;
    });
  });
}

}  // namespace

void rpa_case_commands_register(CLI::App& app) {
  register_make_case(app);
  register_run(app);
  register_check(app);
  register_suite(app);
}
