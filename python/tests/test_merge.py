"""rpa.merge_state against attention over the concatenated key set, -inf rules, every dtype and backend."""

import numpy as np
import pytest

import rpa

BACKENDS = [b for b in ("reference", "simd", "gpu") if rpa.backend_available(b)]


def softmax_state(scores, values):
    """(out, lse) of attention rows: scores [R, n], values [R, n, D]; n = 0 gives 0 and -inf."""
    if scores.shape[1] == 0:
        return np.zeros((scores.shape[0], values.shape[2])), np.full(scores.shape[0], -np.inf)
    m = scores.max(axis=1, keepdims=True)
    w = np.exp(scores - m)
    return np.einsum("rn,rnd->rd", w, values) / w.sum(axis=1, keepdims=True), m[:, 0] + np.log(w.sum(axis=1))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_merge_equals_attention_over_the_concatenated_keys(backend, dtype):
    rng = np.random.default_rng(31)
    T, H, D, n_a, n_b = 3, 4, 24, 7, 11
    scores = 2 * rng.standard_normal((T * H, n_a + n_b))
    values = rng.standard_normal((T * H, n_a + n_b, D))
    full, full_lse = softmax_state(scores, values)
    a, lse_a = softmax_state(scores[:, :n_a], values[:, :n_a])
    b, lse_b = softmax_state(scores[:, n_a:], values[:, n_a:])
    convert = {"float32": lambda x: x.astype(np.float32), "float16": lambda x: x.astype(np.float16),
               "bfloat16": rpa.bfloat16}[dtype]
    out, lse = rpa.merge_state(convert(a.reshape(T, H, D)), lse_a.reshape(T, H).astype(np.float32),
                               convert(b.reshape(T, H, D)), lse_b.reshape(T, H).astype(np.float32), backend=backend)
    got = out.to_float32() if isinstance(out, rpa.BFloat16Array) else out.astype(np.float32)
    # The inputs are rounded to the dtype once and the result once more.
    tolerance = {"float32": 2e-6, "float16": 2e-3, "bfloat16": 2e-2}[dtype]
    assert np.max(np.abs(got.reshape(T * H, D) - full)) <= tolerance
    assert np.max(np.abs(lse.reshape(-1) - full_lse)) <= 2e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_minus_infinity_rules(backend):
    a = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    b = -a
    lse_a = np.array([[0.0, -np.inf, -np.inf], [1.0, 2.0, -np.inf]], np.float32)
    lse_b = np.array([[-np.inf, 0.5, -np.inf], [1.0, -np.inf, 3.0]], np.float32)
    a[0, 1] = np.nan  # a state without keys is never read
    b[0, 0] = np.nan
    out, lse = rpa.merge_state(a, lse_a, b, lse_b, backend=backend)
    assert np.array_equal(out[0, 0], a[0, 0]) and lse[0, 0] == 0.0
    assert np.array_equal(out[0, 1], b[0, 1]) and lse[0, 1] == np.float32(0.5)
    assert np.all(out[0, 2] == 0) and lse[0, 2] == -np.inf
    assert np.allclose(out[1, 0], 0.0, atol=1e-6) and abs(lse[1, 0] - (1.0 + np.log(2.0))) < 1e-6
    assert np.array_equal(out[1, 1], a[1, 1]) and np.array_equal(out[1, 2], b[1, 2])


def test_merge_rejects_mismatched_shapes():
    a = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(rpa.InvalidArgumentError, match="'out_b'"):
        rpa.merge_state(a, np.zeros((2, 3), np.float32), np.zeros((2, 3, 5), np.float32), np.zeros((2, 3), np.float32))
    with pytest.raises(rpa.InvalidArgumentError, match="'lse_a'"):
        rpa.merge_state(a, np.zeros((2, 4), np.float32), a, np.zeros((2, 3), np.float32))
