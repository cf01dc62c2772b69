"""The golden-reference toolkit end to end: files written by numpy read by the C++ tool and back, the exit
statuses, planted errors found at their coordinates with the planted hypothesis for every diagnosis
class (candidates made by the library under the altered rule, or by perturbing its output), the suite,
and a numpy model of the seed's blocking bugs whose wrong rows `rpa check` names and explains."""

import json
import subprocess

import numpy as np
import pytest

import rpa
from oracle import attention
from seed_model import seed_attention

LOG2E = 1.4426950408889634


def tool(*args):
    return subprocess.run([rpa.cases.tool_path()] + [str(a) for a in args], capture_output=True, text=True)


def make(tmp_path, *args, name="case.safetensors"):
    path = tmp_path / name
    result = tool("make-case", path, *args)
    assert result.returncode == 0, result.stderr
    return rpa.load_case(path)


def run_with(case, **changes):
    """(out, lse) of the case through the library with some inputs changed: the reference under an altered rule."""
    fields = dict(queries=case.queries, kv_pages=case.kv_pages, context_lens=case.context_lens,
                  block_tables=case.block_tables, query_start_loc=case.query_start_loc, num_seqs=case.num_seqs,
                  softmax_scale=case.softmax_scale, logits_soft_cap=case.logits_soft_cap,
                  sliding_window=case.sliding_window, softmax_aux=case.softmax_aux)
    fields.update(changes)
    return rpa.ragged_paged_attention(fields.pop("queries"), fields.pop("kv_pages"), fields.pop("context_lens"),
                                      fields.pop("block_tables"), fields.pop("query_start_loc"),
                                      fields.pop("num_seqs"), return_lse=True, backend="reference", **fields)


def row_as(case, row, seq, position):
    """Row `row`'s query computed as a query of sequence `seq` at `position` (one-row problem)."""
    out, _ = run_with(case, queries=case.queries[row:row + 1], context_lens=[position + 1],
                      block_tables=case.block_tables[seq:seq + 1], query_start_loc=[0, 1], num_seqs=1,
                      sliding_window=case.sliding_window)
    return out[0]


def places(case):
    """(sequence, query index, position) of every covered row."""
    result = {}
    for s in range(case.num_seqs):
        start, stop = case.query_start_loc[s], case.query_start_loc[s + 1]
        for t in range(start, stop):
            result[t] = (s, t - start, case.context_lens[s] - (stop - start) + (t - start))
    return result


def wrong_rows(candidate, expected, atol=2e-5, rtol=2e-5):
    """Rows of an f32 candidate outside the default tolerance, computed here independently of the tool."""
    bad = ~(np.abs(candidate - expected) <= atol + rtol * np.abs(expected))
    return sorted(np.nonzero(bad.reshape(len(bad), -1).any(axis=1))[0].tolist())


def assert_diagnosed(case, candidate, expected_rows, hypothesis):
    report = rpa.check(case, candidate)
    assert not report.passed
    assert report.wrong_rows == expected_rows
    assert set(report.hypotheses().values()) == {hypothesis}, str(report)
    return report


# --- files -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_cases_round_trip_through_python_and_the_tool(tmp_path, dtype, suffix):
    case = make(tmp_path, "--preset", "sinks", "--q-dtype", dtype, "--kv-dtype", dtype, "--window", "9",
                "--soft-cap", "3", "--padding-seqs", "1", "--padding-tokens", "2")
    path = tmp_path / ("again" + suffix)
    rpa.save_case(path, case)
    back = rpa.load_case(path)
    for name, array in case.tensors().items():
        a, b = np.asarray(getattr(array, "bits", array)), np.asarray(getattr(back.tensors()[name], "bits", back.tensors()[name]))
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), name
    assert (back.num_seqs, back.sliding_window, back.logits_soft_cap) == (case.num_seqs, 9, 3.0)
    if suffix == ".safetensors":  # the C++ reader takes what Python wrote
        assert tool("run", path, "-o", tmp_path / "out.safetensors").returncode == 0
        out, lse = rpa.load_candidate(tmp_path / "out.safetensors")
        expected, expected_lse = case.run()
        assert np.asarray(getattr(out, "bits", out)).tobytes() == np.asarray(getattr(expected, "bits", expected)).tobytes()
        assert np.array_equal(lse, expected_lse)


def test_separate_caches_round_trip(tmp_path):
    case = make(tmp_path, "--preset", "mixed", "--separate-kv")
    assert case.kv_pages is None and case.k_cache.shape == case.v_cache.shape
    rpa.save_case(tmp_path / "b.safetensors", case)
    assert np.array_equal(rpa.load_case(tmp_path / "b.safetensors").v_cache, case.v_cache)
    assert rpa.check(case, case.run()).passed


def test_malformed_files_are_refused_with_exit_status_2(tmp_path):
    case_path = tmp_path / "case.safetensors"
    make(tmp_path, "--preset", "decode")
    good = case_path.read_bytes()
    (tmp_path / "short.safetensors").write_bytes(good[:-3])
    result = tool("run", tmp_path / "short.safetensors", "-o", tmp_path / "o.safetensors")
    assert result.returncode == 2
    assert "run past the end of the data" in result.stderr and "short.safetensors" in result.stderr
    # A candidate of the wrong shape is bad input too.
    out, _ = rpa.load_case(case_path).run()
    rpa.save_candidate(tmp_path / "cand.safetensors", out[:, :, :-1])
    result = tool("check", case_path, tmp_path / "cand.safetensors")
    assert result.returncode == 2 and "output: shape" in result.stderr
    assert tool("check", case_path).returncode == 2  # a missing argument
    assert tool("check", case_path, tmp_path / "absent.safetensors").returncode == 2
    with pytest.raises(ValueError, match="output: shape"):
        rpa.check(case_path, out[:, :, :-1])


def test_check_exit_statuses_and_json(tmp_path):
    case_path = tmp_path / "case.safetensors"
    case = make(tmp_path, "--preset", "mixed")
    out, lse = case.run()
    rpa.save_candidate(tmp_path / "good.safetensors", out, lse)
    result = tool("check", case_path, tmp_path / "good.safetensors", "--json", tmp_path / "good.json")
    assert result.returncode == 0 and "PASS" in result.stdout
    report = json.loads((tmp_path / "good.json").read_text())
    assert report["pass"] is True and report["wrong_rows"] == []
    bad = out.copy()
    bad[[30, 3, 31]] += 1.0
    rpa.save_candidate(tmp_path / "bad.safetensors", bad, lse)
    result = tool("check", case_path, tmp_path / "bad.safetensors", "--json", tmp_path / "bad.json")
    assert result.returncode == 1 and "FAIL: 3 of 48 rows wrong" in result.stdout
    report = json.loads((tmp_path / "bad.json").read_text())
    assert report["pass"] is False and report["wrong_rows"] == [3, 30, 31]
    # --atol/--rtol large enough accept it.
    assert tool("check", case_path, tmp_path / "bad.safetensors", "--atol", "2").returncode == 0


def test_help_states_the_default_tolerances():
    text = tool("check", "--help").stdout
    assert "bf16 atol 0.01 rtol 0.016" in text and "f32 atol 2e-05 rtol 2e-05" in text and "f16 atol 0.001" in text


def test_bench_refuses_unknown_workloads_and_unavailable_backends():
    assert tool("bench", "--workloads", "W9").returncode == 2
    assert tool("bench", "--backends", "nonsense").returncode == 2
    if not rpa.backend_available("gpu"):
        result = tool("bench", "--backends", "gpu")
        assert result.returncode == 2 and "unavailable" in result.stderr


# --- planted errors ----------------------------------------------------------------------------------------

def test_one_wrong_element_is_found_at_its_coordinates(tmp_path):
    case = make(tmp_path, "--preset", "mixed")
    out, _ = case.run()
    out[7, 3, 5] += 0.5  # row 7: sequence 1 (rows 1..13), query 6, position 45 - 13 + 6 = 38
    report = rpa.check(case, out)
    assert report.wrong_rows == [7]
    run = report.runs[0]
    assert (run["sequence"], run["first_query"], run["first_position"], run["heads"]) == (1, 6, 38, [3])
    assert report.diagnosis[0]["hypothesis"] == "unexplained"
    assert "row 7: sequence 1, queries 6, positions 38, heads 3" in str(report)


def test_a_wrong_sign_is_found_and_left_unexplained(tmp_path):
    case = make(tmp_path, "--preset", "mixed")
    out, _ = case.run()
    out[20:23] = -out[20:23]
    assert_diagnosed(case, out, [20, 21, 22], "unexplained")


def test_a_shifted_block_holds_other_rows(tmp_path):
    case = make(tmp_path, "--preset", "prefill")
    out, _ = case.run()
    shifted = out.copy()
    shifted[8:16] = out[9:17]
    report = assert_diagnosed(case, shifted, list(range(8, 16)), "other_row")
    assert report.diagnosis[0]["detail"].startswith("holds row 9's result")


def test_padding_rows_written(tmp_path):
    case = make(tmp_path, "--preset", "mixed", "--padding-seqs", "1")  # mixed has 3 padding tokens
    out, _ = case.run()
    T = out.shape[0]
    out[T - 3:] = 0.25
    report = assert_diagnosed(case, out, [T - 3, T - 2, T - 1], "padding_row_written")
    assert report.runs[0]["sequence"] is None
    assert "beyond num_seqs" in report.diagnosis[0]["detail"]


def test_rows_left_zero(tmp_path):
    case = make(tmp_path, "--preset", "mixed")
    out, _ = case.run()
    out[40:44] = 0
    assert_diagnosed(case, out, [40, 41, 42, 43], "row_left_zero")


def test_lse_in_base_2(tmp_path):
    case = make(tmp_path, "--preset", "mixed")
    out, lse = case.run()
    covered = sorted(places(case))
    lse2 = lse.copy()
    lse2[covered] *= LOG2E
    assert_diagnosed(case, (out, lse2), covered, "lse_base2")


@pytest.mark.parametrize("hypothesis,preset,changes", [
    ("scale_missing", "mixed", lambda c: dict(softmax_scale=1.0)),
    ("scale_twice", "mixed", lambda c: dict(softmax_scale=1 / 64)),
    ("soft_cap_ignored", "softcap", lambda c: dict(logits_soft_cap=None)),
    ("soft_cap_before_scale", "softcap", lambda c: dict(logits_soft_cap=c.logits_soft_cap / 8)),  # scale 1/8
    ("sinks_ignored", "sinks", lambda c: dict(softmax_aux=None)),
    ("sinks_scaled", "sinks", lambda c: dict(softmax_aux=c.softmax_aux / 8)),
    ("kv_swapped", "mixed", lambda c: dict(kv_pages=c.kv_pages.reshape(c.kv_pages.shape[:2] + (-1, 2, 64))[..., ::-1, :]
                                           .reshape(c.kv_pages.shape))),
])
def test_altered_rules_are_named(tmp_path, hypothesis, preset, changes):
    case = make(tmp_path, "--preset", preset)  # head_dim 64: the default scale is 1/8
    expected, _ = case.run()
    candidate, _ = run_with(case, **changes(case))
    assert_diagnosed(case, candidate, wrong_rows(candidate, expected), hypothesis)


@pytest.mark.parametrize("delta", [-1, 1])
def test_window_off_by_one(tmp_path, delta):
    case = make(tmp_path, "--preset", "window")
    expected, _ = case.run()
    candidate, _ = run_with(case, sliding_window=case.sliding_window + delta)
    report = assert_diagnosed(case, candidate, wrong_rows(candidate, expected), "window_off_by_one")
    assert ("W-1" if delta < 0 else "W+1") in report.diagnosis[0]["detail"]


def test_gqa_interleaved(tmp_path):
    case = make(tmp_path, "--preset", "gqa")  # QH 16, KVH 2
    QH, KVH = 16, 2
    group = QH // KVH
    # q head h placed where the contract maps it to kv head h % KVH.
    place = np.array([(h % KVH) * group + h // KVH for h in range(QH)])
    queries = np.empty_like(case.queries)
    queries[:, place] = case.queries
    out, _ = run_with(case, queries=queries)
    candidate = out[:, place]
    expected, _ = case.run()
    assert_diagnosed(case, candidate, wrong_rows(candidate, expected), "gqa_interleaved")


def test_clamped_block_table(tmp_path):
    case = make(tmp_path, "--q-lens", "1", "3", "--context-lens", "139", "100", "--page-size", "2", "--table-width",
                "70", "--q-heads", "4", "--kv-heads", "2", "--head-dim", "16")
    tables = case.block_tables.copy()
    # Slices of 64 entries clamped at the width 70: entries 64..69 are read from 6..11.
    tables[:, 64:70] = case.block_tables[:, 6:12]
    candidate, _ = run_with(case, block_tables=tables)
    expected, _ = case.run()
    assert wrong_rows(candidate, expected) == [0]  # only the 139-token sequence reaches entry 64
    report = assert_diagnosed(case, candidate, [0], "clamped_block_table")
    assert "slices of 64 entries" in report.diagnosis[0]["detail"]


def test_tf32_products_are_reduced_precision(tmp_path):
    case = make(tmp_path, "--preset", "prefill")

    def tf32(x):  # TF32 keeps 10 of f32's 23 mantissa bits (rounded to nearest)
        bits = np.asarray(x, np.float32).view(np.uint32)
        return ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)
    candidate, _ = run_with(case, queries=tf32(case.queries), kv_pages=tf32(case.kv_pages))
    expected, _ = case.run()
    report = assert_diagnosed(case, candidate, wrong_rows(candidate, expected), "reduced_precision")
    assert 1e-4 < report.max_abs_error < 4e-3


def test_positions_shifted_and_another_sequence(tmp_path):
    case = make(tmp_path, "--preset", "prefill")  # sequences of 40 and 23 new tokens
    where = places(case)
    out, _ = case.run()
    candidate = out.copy()
    for t in range(10, 14):  # sees one future key
        s, _, pos = where[t]
        candidate[t] = row_as(case, t, s, pos + 1)
    for t in range(44, 47):  # sequence 1's rows computed against sequence 0's keys
        candidate[t] = row_as(case, t, 0, 30)
    report = rpa.check(case, candidate)
    assert report.wrong_rows == [10, 11, 12, 13, 44, 45, 46]
    hypotheses = report.hypotheses()
    assert [hypotheses[t] for t in range(10, 14)] == ["position_shift"] * 4
    assert [hypotheses[t] for t in range(44, 47)] == ["other_sequence"] * 3
    assert "sees 1 future key" in report.diagnosis[0]["detail"]
    assert "sequence 0's keys at position 30" in report.diagnosis[4]["detail"]


def test_nan_from_unused_slots(tmp_path):
    case = make(tmp_path, "--preset", "decode", "--nan-unused")  # contexts 17, 64, 100, 250 with pages of 16
    out, _ = case.run()
    leaky = [s for s in range(4) if case.context_lens[s] % 16]  # a last page with NaN past the context
    out[leaky] = np.nan
    assert_diagnosed(case, out, leaky, "nan_from_masked_slots")


# --- the seed -------------------------------------------------------------------------------------------------

def seed_check(case):
    candidate = seed_attention(case)
    expected, _ = attention(case.queries, case.kv_pages, case.context_lens, case.block_tables, case.query_start_loc,
                            case.num_seqs, softmax_scale=case.softmax_scale, sliding_window=case.sliding_window)
    report = rpa.check(case, candidate)
    assert report.wrong_rows == wrong_rows(candidate, expected), str(report)
    return report, report.hypotheses()


def test_seed_query_block_past_the_end(tmp_path):
    # 13 tokens padded to 16: sequence 1's block starting at row 10 slides back to 8, keeping its positions.
    case = make(tmp_path, "--q-lens", "10", "3", "--context-lens", "30", "20", "--q-heads", "4", "--kv-heads", "2",
                "--head-dim", "16", "--page-size", "4")
    report, hypotheses = seed_check(case)
    assert report.wrong_rows == [8, 9, 10, 11]
    assert [hypotheses[t] for t in (8, 9)] == ["other_sequence"] * 2  # sequence 0's rows hold sequence 1's
    assert [hypotheses[t] for t in (10, 11)] == ["position_shift"] * 2  # sequence 1 sees future keys


def test_seed_padding_rows(tmp_path):
    case = make(tmp_path, "--q-lens", "5", "--context-lens", "9", "--padding-tokens", "4", "--q-heads", "4",
                "--kv-heads", "2", "--head-dim", "16", "--page-size", "4")
    report, hypotheses = seed_check(case)
    assert report.wrong_rows == [5, 6, 7]  # the block of rows 0..7; row 8 is beyond it
    assert set(hypotheses.values()) == {"padding_row_written"}


def test_seed_block_table_wider_than_64(tmp_path):
    # 9 tokens padded to 16 and sequences starting at rows 0 and 8: no query block slides back.
    case = make(tmp_path, "--q-lens", "8", "1", "--context-lens", "100", "139", "--page-size", "2", "--table-width",
                "70", "--q-heads", "4", "--kv-heads", "2", "--head-dim", "16")
    report, hypotheses = seed_check(case)
    assert report.wrong_rows == [8]  # only the 139-token sequence reaches table entry 64
    assert hypotheses == {8: "clamped_block_table"}


def test_seed_long_window(tmp_path):
    # A table of 192 entries (3 whole slices of 64) and blocks starting at rows 0 and 8: only bug 3.
    case = make(tmp_path, "--q-lens", "8", "1", "--context-lens", "300", "280", "--page-size", "2", "--window", "64",
                "--table-width", "192", "--q-heads", "4", "--kv-heads", "2", "--head-dim", "16")
    report, hypotheses = seed_check(case)
    # Every row's window starts past key 128, so the first 64-page block is empty: NaN.
    assert report.wrong_rows == list(range(9))
    assert set(hypotheses.values()) == {"nan_from_empty_block"}


def test_seed_nan_in_unused_pages(tmp_path):
    case = make(tmp_path, "--q-lens", "1", "6", "1", "--context-lens", "17", "30", "40", "--page-size", "4",
                "--nan-unused", "--q-heads", "4", "--kv-heads", "2", "--head-dim", "16")
    report, hypotheses = seed_check(case)
    assert report.wrong_rows == list(range(8))  # every row reads page 0 (unneeded entries) and NaN slots
    assert set(hypotheses.values()) == {"nan_from_masked_slots"}


# --- the suite ------------------------------------------------------------------------------------------------

def test_the_suite_filled_by_the_reference_checks_clean(tmp_path):
    report = rpa.testing.run_suite(lambda case: case.run(), directory=str(tmp_path / "suite"))
    assert report.passed, str(report)
    assert len(report.cases) == 32
    assert tool("suite", "check", tmp_path / "suite").returncode == 0


def test_a_buggy_kernel_fails_the_suite_with_its_diagnosis(tmp_path):
    def no_sinks(case):
        kv = case.kv_pages if case.kv_pages is not None else (case.k_cache, case.v_cache)
        return rpa.ragged_paged_attention(case.queries, kv, case.context_lens, case.block_tables,
                                          case.query_start_loc, case.num_seqs, softmax_scale=case.softmax_scale,
                                          logits_soft_cap=case.logits_soft_cap, sliding_window=case.sliding_window,
                                          backend="reference")
    report = rpa.testing.run_suite(no_sinks, directory=str(tmp_path / "suite"))
    assert not report.passed
    assert set(report.failed) == {"sinks_shared", "sinks_per_kv_head", "sinks_per_q_head", "sinks_minus_inf"}
    assert "sinks_ignored" in report["sinks_shared"]["summary"]
    assert tool("suite", "check", tmp_path / "suite").returncode == 1


def test_a_raising_kernel_and_a_bad_manifest(tmp_path):
    def broken(case):
        raise RuntimeError("kernel exploded")
    report = rpa.testing.run_suite(broken, cases=["prefill"])
    assert not report.passed and "kernel exploded" in str(report)
    assert "missing output" in report["prefill"]["summary"]
    (tmp_path / "manifest.json").write_text('{"suite": "rpa-conformance", "version": 99, "cases": []}')
    result = tool("suite", "check", tmp_path)
    assert result.returncode == 2 and "suite version 99" in result.stderr


# --- the bench ------------------------------------------------------------------------------------------------

def test_bench_json_goals_and_plot(tmp_path):
    import importlib.util
    import os
    goals = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "bench", "goals.json")
    plotting = importlib.util.find_spec("matplotlib") is not None  # the quick start installs it
    result = tool("bench", "--workloads", "context", "threads", "--contexts", "64", "256", "--repeats", "2",
                  "--q-heads", "4", "--kv-heads", "1", "--head-dim", "32", "--page-size", "8", "--goals", goals,
                  "--json", tmp_path / "run.json", *(["--plot", tmp_path / "run.png"] if plotting else []))
    assert result.returncode == 0, result.stderr
    assert "goals (" in result.stdout and "simd decode scaling" in result.stdout
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["rpa_version"] == "%d.%d.%d" % rpa.library_version()
    assert run["timestamp"].endswith("Z") and run["cpu_model"] and "gpu_model" in run
    assert run["shape"]["q_heads"] == 4 and run["shape"]["kv_dtype"] == "bf16"
    assert {r["workload"] for r in run["rows"]} == {"W1", "W1 threads", "ctx 64", "ctx 256"}
    assert all(r["valid"] for r in run["rows"])
    assert "simd decode scaling 1 -> 2 threads" in run["goals"] or os.cpu_count() < 2
    if plotting:
        assert (tmp_path / "run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Without --goals the user's output judges nothing.
    result = tool("bench", "--workloads", "context", "--contexts", "64", "--repeats", "1", "--q-heads", "4",
                  "--kv-heads", "1", "--head-dim", "32")
    assert result.returncode == 0 and "goal" not in result.stdout


def test_bench_times_a_case_file(tmp_path):
    make(tmp_path, "--preset", "window")
    result = tool("bench", "--case", tmp_path / "case.safetensors", "--repeats", "2", "--json", tmp_path / "run.json")
    assert result.returncode == 0, result.stderr
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["case"].endswith("case.safetensors")
    assert [r["workload"] for r in run["rows"]] == ["case"] * len(run["rows"]) and run["all_valid"]
    assert tool("bench", "--case", tmp_path / "absent.safetensors").returncode == 2


# --- tools/third_party_suite.py -------------------------------------------------------------------------------

def third_party_suite():
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "tools",
                        "third_party_suite.py")
    spec = importlib.util.spec_from_file_location("third_party_suite", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_third_party_script_names_missing_packages(monkeypatch, capsys):
    script = third_party_suite()
    monkeypatch.setattr(script, "REQUIRES", {"jax": ["surely_not_installed_jax"], "flex": ["torch"]})
    monkeypatch.setattr("sys.argv", ["third_party_suite.py", "--impl", "jax"])
    assert script.main() == 2
    assert "--impl jax needs surely_not_installed_jax, which is not installed" in capsys.readouterr().err


def test_third_party_script_tabulates_the_suite(tmp_path, monkeypatch, capsys):
    script = third_party_suite()

    def without_sinks():  # a stand-in kernel: the reference, sinks left out
        def run(case):
            kv = case.kv_pages if case.kv_pages is not None else (case.k_cache, case.v_cache)
            return rpa.ragged_paged_attention(case.queries, kv, case.context_lens, case.block_tables,
                                              case.query_start_loc, case.num_seqs, softmax_scale=case.softmax_scale,
                                              logits_soft_cap=case.logits_soft_cap,
                                              sliding_window=case.sliding_window, backend="reference")
        return run
    monkeypatch.setattr(script, "KERNELS", {"jax": without_sinks, "flex": lambda: (lambda case: case.run())})
    monkeypatch.setattr(script, "REQUIRES", {"jax": [], "flex": []})
    monkeypatch.setattr("sys.argv", ["third_party_suite.py", "--out", str(tmp_path), "--markdown",
                                     str(tmp_path / "table.md")])
    assert script.main() == 0
    table = (tmp_path / "table.md").read_text()
    assert "| case | jax | flex |" in table
    assert "| sinks_shared | fail: 10 wrong row(s) (sinks_ignored 10) | pass |" in table
    assert "| **passed** | 28 of 32" in table and "32 of 32" in table
