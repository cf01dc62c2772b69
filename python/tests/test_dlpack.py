"""DLPack tensors in the binding: borrowed without copies, results equal to the numpy path's, clear errors."""

import numpy as np
import pytest

import rpa
from rpa import _tensors
from oracle import attention, random_problem


class Producer:
    """A foreign framework's tensor: nothing but the DLPack protocol over a numpy array's memory."""

    def __init__(self, array):
        self.array = array

    def __dlpack__(self, stream=None):
        assert stream is None  # host memory takes no stream
        return self.array.__dlpack__()

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()


def problem(seed=11, **kw):
    return random_problem(np.random.default_rng(seed), [1, 6, 0, 3], [25, 6, 4, 19], **kw)


def test_borrowed_descriptor_points_at_the_producers_memory():
    kv = problem()[1]
    view = kv[1:, :, ::2]  # pages 1.., K heads only: a strided view
    borrowed = _tensors.borrow_float("kv_pages", Producer(view))
    assert borrowed.tensor.data == view.ctypes.data
    assert borrowed.shape == view.shape
    assert [borrowed.tensor.strides[i] for i in range(4)] == [s // 4 for s in view.strides]
    assert borrowed.memory == _tensors.MEMORY_HOST


def test_dlpack_inputs_and_output_match_the_numpy_path():
    queries, kv, context_lens, block_tables, qsl = problem()
    expected, expected_lse = rpa.ragged_paged_attention(queries, kv, context_lens, block_tables, qsl, 4,
                                                        sliding_window=7, return_lse=True, backend="simd")
    out = np.full(queries.shape, 5.0, np.float32)
    result, lse = rpa.ragged_paged_attention(
        Producer(queries), (Producer(kv[:, :, 0::2]), Producer(kv[:, :, 1::2])), Producer(context_lens),
        Producer(block_tables.astype(np.int64)), Producer(qsl), 4, sliding_window=7, return_lse=True,
        backend="simd", out=Producer(out))
    assert result.array is out  # written in place through the borrowed pointer
    assert np.array_equal(out, expected) and np.array_equal(lse, expected_lse)
    oracle, _ = attention(queries, kv, context_lens, block_tables, qsl, 4, sliding_window=7)
    assert np.max(np.abs(out[:10] - oracle[:10])) <= 2e-5


def test_dlpack_sinks_one_per_q_head():
    queries, kv, context_lens, block_tables, qsl = problem()
    sinks = np.array([0.3, -1.0, 2.0, -np.inf], np.float32)
    direct = rpa.ragged_paged_attention(queries, kv, context_lens, block_tables, qsl, 4, softmax_aux=sinks,
                                        backend="reference")
    through = rpa.ragged_paged_attention(queries, kv, context_lens, block_tables, qsl, 4,
                                         softmax_aux=Producer(sinks), backend="reference")
    assert np.array_equal(direct, through)


def test_dlpack_float64_and_negative_strides_are_refused_not_copied():
    queries, kv, context_lens, block_tables, qsl = problem()
    with pytest.raises(ValueError, match="queries: DLPack dtype"):
        rpa.ragged_paged_attention(Producer(queries.astype(np.float64)), kv, context_lens, block_tables, qsl, 4)
    with pytest.raises(ValueError, match="kv_pages: strides"):
        rpa.ragged_paged_attention(queries, Producer(kv[::-1]), context_lens, block_tables, qsl, 4)
    with pytest.raises(ValueError, match="context_lens: DLPack dtype"):
        rpa.ragged_paged_attention(queries, kv, Producer(context_lens.astype(np.float32)), block_tables, qsl, 4)


def test_dlpack_metadata_out_of_int32_range():
    queries, kv, context_lens, block_tables, qsl = problem()
    wide = block_tables.astype(np.int64)
    wide[0, 0] = 2**40
    with pytest.raises(ValueError, match="block_tables: values do not fit in int32"):
        rpa.ragged_paged_attention(queries, kv, context_lens, Producer(wide), qsl, 4)


def test_ml_dtypes_bfloat16_round_trip():
    ml = pytest.importorskip("ml_dtypes")
    queries, kv, context_lens, block_tables, qsl = problem()
    q16, kv16 = queries.astype(ml.bfloat16), kv.astype(ml.bfloat16)
    out = rpa.ragged_paged_attention(q16, kv16, context_lens, block_tables, qsl, 4, backend="simd")
    assert out.dtype == ml.bfloat16  # bf16 in, bf16 out, in the caller's own type
    carried = rpa.ragged_paged_attention(rpa.bfloat16(q16.astype(np.float32)), rpa.bfloat16(kv16.astype(np.float32)),
                                         context_lens, block_tables, qsl, 4, backend="simd")
    assert np.array_equal(out.view(np.uint16), carried.bits)


def test_docstring_examples_run():
    import doctest
    result = doctest.testmod(rpa)
    assert result.attempted > 0 and result.failed == 0
