"""The Python binding against an independent fp64 oracle, on every available backend."""

import numpy as np
import pytest

import rpa
from oracle import attention, random_problem

TOLERANCE = {"reference": 2e-6, "simd": 2e-5, "gpu": 2e-5}
BACKENDS = [b for b in ("reference", "simd", "gpu") if rpa.backend_available(b)]


def covered(qsl, num_seqs, T):
    mask = np.zeros(T, bool)
    mask[qsl[0]:qsl[num_seqs]] = True
    return mask


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("options", [
    {},
    {"sliding_window": 5},
    {"logits_soft_cap": 3.0},
    {"softmax_scale": 0.3, "sliding_window": 16, "logits_soft_cap": 1.5},
])
def test_matches_oracle(backend, options):
    rng = np.random.default_rng(3)
    q_lens, ctx = [1, 7, 0, 20, 3], [40, 7, 9, 33, 70]
    queries, kv, context_lens, block_tables, qsl = random_problem(rng, q_lens, ctx)
    out, lse = rpa.ragged_paged_attention(queries, kv, context_lens, block_tables, qsl, len(q_lens),
                                          return_lse=True, backend=backend, **options)
    expected, expected_lse = attention(queries, kv, context_lens, block_tables, qsl, len(q_lens), **options)
    rows = covered(qsl, len(q_lens), queries.shape[0])
    assert out.dtype == np.float32
    assert np.max(np.abs(out[rows] - expected[rows])) <= TOLERANCE[backend]
    assert np.max(np.abs(lse[rows] - expected_lse[rows])) <= TOLERANCE[backend]
    assert np.all(out[~rows] == 0) and np.all(lse[~rows] == -np.inf)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_dimensional_sinks_are_per_q_head(backend):
    rng = np.random.default_rng(4)
    queries, kv, context_lens, block_tables, qsl = random_problem(rng, [2, 5], [9, 12], QH=4, KVH=2)
    sinks = np.array([0.5, -1.0, 2.0, -np.inf], np.float32)
    out = rpa.ragged_paged_attention(queries, kv, context_lens, block_tables, qsl, 2, softmax_aux=sinks,
                                     backend=backend)
    expected, _ = attention(queries, kv, context_lens, block_tables, qsl, 2, sinks=sinks.reshape(4, 1))
    rows = covered(qsl, 2, queries.shape[0])
    assert np.max(np.abs(out[rows] - expected[rows])) <= TOLERANCE[backend]
    # Per q head means heads sharing a kv head still differ: head 0's sink is not head 1's.
    shared, _ = attention(queries, kv, context_lens, block_tables, qsl, 2, sinks=sinks[:1].reshape(1, 1))
    assert np.max(np.abs(out[rows][:, 1] - shared[rows][:, 1])) > 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_dimensional_sinks_per_kv_head(backend):
    rng = np.random.default_rng(5)
    queries, kv, context_lens, block_tables, qsl = random_problem(rng, [3], [11], QH=4, KVH=2)
    sinks = np.array([[0.1, 0.7, -2.0], [1.5, -0.3, 0.0]], np.float32)
    out = rpa.ragged_paged_attention(queries, kv, context_lens, block_tables, qsl, 1, softmax_aux=sinks,
                                     backend=backend)
    expected, _ = attention(queries, kv, context_lens, block_tables, qsl, 1, sinks=sinks)
    assert np.max(np.abs(out[:3] - expected[:3])) <= TOLERANCE[backend]


@pytest.mark.parametrize("backend", BACKENDS)
def test_separate_caches_and_half_precision(backend):
    rng = np.random.default_rng(6)
    queries, kv, context_lens, block_tables, qsl = random_problem(rng, [4, 1], [10, 30])
    k, v = kv[:, :, 0::2], kv[:, :, 1::2]  # strided views, no copies
    out = rpa.ragged_paged_attention(queries.astype(np.float16), (k.astype(np.float16), v.astype(np.float16)),
                                     context_lens, block_tables, qsl, 2, backend=backend)
    assert out.dtype == np.float16
    expected, _ = attention(queries.astype(np.float16), kv.astype(np.float16), context_lens, block_tables, qsl, 2)
    rows = covered(qsl, 2, queries.shape[0])
    assert np.max(np.abs(out[rows].astype(np.float64) - expected[rows])) <= 4 / 2048  # one f16 rounding of |x| < 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_bfloat16_inputs_and_output(backend):
    rng = np.random.default_rng(7)
    queries, kv, context_lens, block_tables, qsl = random_problem(rng, [3], [17])
    q16, kv16 = rpa.bfloat16(queries), rpa.bfloat16(kv)
    out = rpa.ragged_paged_attention(q16, kv16, context_lens, block_tables, qsl, 1, backend=backend)
    assert isinstance(out, rpa.BFloat16Array)
    expected, _ = attention(q16.to_float32(), kv16.to_float32(), context_lens, block_tables, qsl, 1)
    assert np.max(np.abs(out.to_float32()[:3] - expected[:3])) <= 4 / 256  # one bf16 rounding of |x| < 4


def test_bfloat16_rounding():
    x = np.array([1.0, 1.00390625, 1.01171875, -3.5, np.inf], np.float32)  # 1 + 2^-8 ties to even: 1.0
    assert np.array_equal(rpa.bfloat16(x).to_float32(), np.array([1.0, 1.0, 1.015625, -3.5, np.inf], np.float32))
    assert np.isnan(rpa.bfloat16(np.array([np.nan], np.float32)).to_float32()[0])


def test_out_argument_num_seqs_array_and_padding():
    rng = np.random.default_rng(8)
    queries, kv, context_lens, block_tables, qsl = random_problem(rng, [2, 2, 2], [5, 6, 7], padding_tokens=1)
    out = np.full(queries.shape, 7.0, np.float32)
    result = rpa.ragged_paged_attention(queries, kv, context_lens, block_tables, qsl, np.array([2], np.int32),
                                        out=out, backend="reference")
    assert result is out
    expected, _ = attention(queries, kv, context_lens, block_tables, qsl, 2)
    assert np.max(np.abs(out[:4] - expected[:4])) <= 2e-6
    assert np.all(out[4:] == 0)  # the third sequence is beyond num_seqs, the last row is padding


@pytest.mark.parametrize("breaks, fragment", [
    (lambda a: a.update(num_seqs=9), "num_seqs"),
    (lambda a: a["context_lens"].__setitem__(0, 10**6), "context_lens"),
    (lambda a: a["block_tables"].__setitem__((1, 0), 999), "block_tables"),
    (lambda a: a["query_start_loc"].__setitem__(1, 100), "query_start_loc"),
    (lambda a: a.update(queries=a["queries"][:, :3]), "queries"),
    (lambda a: a.update(kv_pages=a["kv_pages"][..., :16]), "kv_pages"),
    (lambda a: a.update(softmax_aux=np.array([np.nan] * 4, np.float32)), "softmax_aux"),
    (lambda a: a.update(softmax_aux=np.zeros(3, np.float32)), "softmax_aux"),
    (lambda a: a.update(sliding_window=-1), "sliding_window"),
    (lambda a: a.update(logits_soft_cap=float("inf")), "logits_soft_cap"),
    (lambda a: a.update(softmax_scale=float("nan")), "softmax_scale"),
    (lambda a: a.update(queries=a["queries"][0]), "queries"),
    (lambda a: a.update(backend="tpu"), "backend"),
    (lambda a: a.update(out=np.zeros((1, 1, 1), np.float32)), "out"),
])
def test_malformed_inputs_raise_value_error(breaks, fragment):
    rng = np.random.default_rng(9)
    queries, kv, context_lens, block_tables, qsl = random_problem(rng, [2, 3], [6, 9])
    call = dict(queries=queries, kv_pages=kv, context_lens=context_lens, block_tables=block_tables,
                query_start_loc=qsl, num_seqs=2)
    breaks(call)
    with pytest.raises(ValueError, match=fragment):
        rpa.ragged_paged_attention(**call)


def test_library_facts():
    assert rpa.library_version() >= (0, 1, 0)
    assert rpa.backend_available("reference")
    assert all({"path", "reason", "usable"} <= set(r) for r in rpa.plugin_reports())


def test_window_of_zero_or_wider_than_int32_means_none():
    rng = np.random.default_rng(10)
    queries, kv, context_lens, block_tables, qsl = random_problem(rng, [3, 2], [20, 9])
    call = (queries, kv, context_lens, block_tables, qsl, 2)
    none = rpa.ragged_paged_attention(*call, backend="reference")
    assert np.array_equal(rpa.ragged_paged_attention(*call, sliding_window=0, backend="reference"), none)
    assert np.array_equal(rpa.ragged_paged_attention(*call, sliding_window=2**40, backend="reference"), none)
    assert not np.array_equal(rpa.ragged_paged_attention(*call, sliding_window=2, backend="reference"), none)


def _call(**changes):
    rng = np.random.default_rng(11)
    queries, kv, context_lens, block_tables, qsl = random_problem(rng, [2, 3], [6, 9])
    call = dict(queries=queries, kv_pages=kv, context_lens=context_lens, block_tables=block_tables,
                query_start_loc=qsl, num_seqs=2, backend="reference")
    call.update(changes)
    return call


@pytest.mark.parametrize("changes, fragment", [
    # float64 that float32 cannot hold exactly: 1e300 would become inf, 0.1 would be rounded.
    (lambda c: c.update(queries=np.full(c["queries"].shape, 1e300)), "queries: float64 value 1e"),
    (lambda c: c.update(queries=c["queries"].astype(np.float64) + 1e-12), "queries: float64"),
    (lambda c: c.update(kv_pages=np.full(c["kv_pages"].shape, 0.1)), "kv_pages: float64 value 0.1"),
    (lambda c: c.update(softmax_aux=np.array([0.1, 0, 0, 0])), "softmax_aux: float64"),
    # integer and bool arrays are not float tensors
    (lambda c: c.update(queries=np.ones(c["queries"].shape, np.int32)), "queries: dtype int32"),
    (lambda c: c.update(kv_pages=np.ones(c["kv_pages"].shape, np.int64)), "kv_pages: dtype int64"),
    (lambda c: c.update(softmax_aux=np.zeros(4, bool)), "softmax_aux: dtype bool"),
    # scalars: no truncation, no strings or bools
    (lambda c: c.update(sliding_window=4.5), "sliding_window: expected an integer"),
    (lambda c: c.update(sliding_window=4.0), "sliding_window: expected an integer"),
    (lambda c: c.update(sliding_window=True), "sliding_window: expected an integer"),
    (lambda c: c.update(softmax_scale="0.5"), "softmax_scale: expected a real number"),
    (lambda c: c.update(logits_soft_cap="3"), "logits_soft_cap: expected a real number"),
    (lambda c: c.update(softmax_scale=True), "softmax_scale: expected a real number"),
    (lambda c: c.update(softmax_scale=2**53 + 1), "softmax_scale: .* is not exactly a double"),
    (lambda c: c.update(logits_soft_cap=10**400), "logits_soft_cap: .* does not fit"),
    # the library's range rules reach Python as ValueError too
    (lambda c: c.update(softmax_scale=1e39), "softmax_scale"),
    (lambda c: c.update(logits_soft_cap=1e-39), "logits_soft_cap"),
])
def test_conversions_that_would_change_a_value_are_refused(changes, fragment):
    call = _call()
    changes(call)
    with pytest.raises(ValueError, match=fragment):
        rpa.ragged_paged_attention(**call)


def test_conversions_that_keep_every_value_happen():
    call = _call()
    expected = rpa.ragged_paged_attention(**call)
    # float64 holding float32 values (NaN in unused slots included) is narrowed exactly.
    same = rpa.ragged_paged_attention(**_call(queries=call["queries"].astype(np.float64),
                                              kv_pages=call["kv_pages"].astype(np.float64)))
    assert np.array_equal(same, expected)
    # numpy integer and float scalars are accepted as numbers, an integer window as a window.
    assert np.array_equal(rpa.ragged_paged_attention(**_call(softmax_scale=np.float32(32 ** -0.5))),
                          rpa.ragged_paged_attention(**_call(softmax_scale=float(np.float32(32 ** -0.5)))))
    assert np.array_equal(rpa.ragged_paged_attention(**_call(sliding_window=np.int64(3))),
                          rpa.ragged_paged_attention(**_call(sliding_window=3)))
    # a misaligned float32 view (a byte offset of 2 into a buffer) is copied, not refused
    raw = np.zeros(call["queries"].nbytes + 2, np.uint8)
    shifted = raw[2:].view(np.float32).reshape(call["queries"].shape)
    shifted[...] = call["queries"]
    assert np.array_equal(rpa.ragged_paged_attention(**_call(queries=shifted)), expected)


def test_in_place_output_over_the_queries_is_refused():
    call = _call()
    call["out"] = call["queries"]
    with pytest.raises(ValueError, match="overlap"):
        rpa.ragged_paged_attention(**call)
