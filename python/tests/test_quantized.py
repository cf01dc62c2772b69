"""Quantised KV caches and rpa.write_kv through the binding, against the fp64 oracle on values decoded here
from the formats' bit fields."""

import numpy as np
import pytest

import rpa
from oracle import attention, random_problem

BACKENDS = [b for b in ("reference", "simd", "gpu") if rpa.backend_available(b)]
FORMATS = ["fp8_e4m3", "fp8_e5m2", "int8"]


def decode(codes, kv_dtype):
    """float64 values of uint8 codes, from sign, exponent and mantissa."""
    c = np.asarray(codes).astype(np.int64)
    if kv_dtype == "int8":
        return np.where(c < 128, c, c - 256).astype(np.float64)
    sign = np.where(c & 0x80, -1.0, 1.0)
    if kv_dtype == "fp8_e4m3":
        e, m = (c >> 3) & 15, c & 7
        value = np.where(e == 0, np.ldexp(m.astype(np.float64), -9), np.ldexp((8 + m).astype(np.float64), e - 10))
        return np.where((e == 15) & (m == 7), np.nan, sign * value)
    e, m = (c >> 2) & 31, c & 3
    value = np.where(e == 0, np.ldexp(m.astype(np.float64), -16), np.ldexp((4 + m).astype(np.float64), e - 17))
    return np.where(e == 31, np.where(m == 0, sign * np.inf, np.nan), sign * value)


def quantised_problem(rng, kv_dtype):
    queries, kv, context_lens, block_tables, qsl = random_problem(rng, [1, 4, 1], [30, 20, 9], QH=8, KVH=2, D=32)
    visible = ~np.isnan(kv)
    if kv_dtype == "int8":
        codes = rng.integers(-40, 41, kv.shape).astype(np.uint8)
    else:  # codes of magnitude below 4 (no NaN or infinity), both signs
        limit = 0x48 if kv_dtype == "fp8_e4m3" else 0x44
        codes = (rng.integers(0, limit, kv.shape) | (rng.integers(0, 2, kv.shape) << 7)).astype(np.uint8)
    codes[~visible] = 0x7F  # NaN in fp8 (127 in int8) in every invisible slot
    return queries, codes, context_lens, block_tables, qsl


def dequantise(codes, kv_dtype, k_scale, v_scale):
    KVH = codes.shape[2] // 2
    scales = np.empty(2 * KVH, np.float32)
    scales[0::2] = np.broadcast_to(np.float32(k_scale), (KVH,))
    scales[1::2] = np.broadcast_to(np.float32(v_scale), (KVH,))
    # One f32 rounding of code * scale, as the contract dequantises.
    return (decode(codes, kv_dtype).astype(np.float32) * scales[:, None]).astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kv_dtype", FORMATS)
@pytest.mark.parametrize("scales", [(None, None), (0.25, 1.5), (np.array([0.1, 0.4], np.float32), [2.0, 0.5])])
def test_quantised_cache_matches_oracle(backend, kv_dtype, scales):
    rng = np.random.default_rng(11)
    queries, codes, context_lens, block_tables, qsl = quantised_problem(rng, kv_dtype)
    k_scale, v_scale = scales
    if kv_dtype == "int8":  # codes up to 40: dequantised values of order 1, like the 2e-5 bound assumes
        k_scale, v_scale = [0.05 * np.asarray(1.0 if x is None else x, np.float32) for x in (k_scale, v_scale)]
    cache = codes.view(np.int8) if kv_dtype == "int8" else codes  # int8 arrays name their format
    out, lse = rpa.ragged_paged_attention(queries, cache, context_lens, block_tables, qsl, 3, return_lse=True,
                                          backend=backend, kv_dtype=None if kv_dtype == "int8" else kv_dtype,
                                          k_scale=k_scale, v_scale=v_scale)
    kv = dequantise(codes, kv_dtype, 1.0 if k_scale is None else k_scale, 1.0 if v_scale is None else v_scale)
    expected, expected_lse = attention(queries, kv, context_lens, block_tables, qsl, 3)
    rows = slice(0, int(qsl[3]))
    assert np.all(np.isfinite(out))
    assert np.max(np.abs(out[rows] - expected[rows])) <= 2e-5
    assert np.max(np.abs(lse[rows] - expected_lse[rows])) <= 2e-5


def test_ml_dtypes_float8_arrays_are_inferred():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(12)
    queries, codes, context_lens, block_tables, qsl = quantised_problem(rng, "fp8_e4m3")
    as_uint8 = rpa.ragged_paged_attention(queries, codes, context_lens, block_tables, qsl, 3, kv_dtype="fp8_e4m3",
                                          k_scale=0.5, backend="reference")
    typed = rpa.ragged_paged_attention(queries, codes.view(ml_dtypes.float8_e4m3fn), context_lens, block_tables,
                                       qsl, 3, k_scale=0.5, backend="reference")
    assert np.array_equal(as_uint8, typed)


def test_torch_float8_tensors_are_inferred():
    torch = pytest.importorskip("torch")
    if not hasattr(torch, "float8_e5m2"):
        pytest.skip("this torch has no float8 dtypes")
    rng = np.random.default_rng(13)
    queries, codes, context_lens, block_tables, qsl = quantised_problem(rng, "fp8_e5m2")
    expected = rpa.ragged_paged_attention(queries, codes, context_lens, block_tables, qsl, 3, kv_dtype="fp8_e5m2",
                                          backend="reference")
    tensor = torch.from_numpy(codes.copy()).view(torch.float8_e5m2)
    got = rpa.ragged_paged_attention(queries, tensor, context_lens, block_tables, qsl, 3, backend="reference")
    assert np.array_equal(expected, got)
    # torch's own decoding agrees with the format's bit fields.
    assert np.array_equal(np.nan_to_num(tensor.float().numpy(), nan=7.0),
                          np.nan_to_num(decode(codes, "fp8_e5m2").astype(np.float32), nan=7.0))


@pytest.mark.parametrize("kv_dtype", FORMATS)
def test_torch_cuda_quantised_caches_are_borrowed(kv_dtype):
    """CUDA tensors of codes (torch float8 / int8, kv_dtype inferred; uint8 with kv_dtype) run on the GPU in
    place, combined or separate, and agree with the host reference."""
    torch = pytest.importorskip("torch")
    if not (torch.cuda.is_available() and rpa.backend_available("gpu")):
        pytest.skip("needs torch with CUDA and the gpu backend")
    rng = np.random.default_rng(15)
    queries, codes, context_lens, block_tables, qsl = quantised_problem(rng, kv_dtype)
    small = 0.05 if kv_dtype == "int8" else 1.0  # int8 codes reach 40: keep the scores moderate
    k_scale, v_scale = np.array([0.5, 2.0], np.float32) * np.float32(small), 0.75 * small
    expected = rpa.ragged_paged_attention(queries, codes, context_lens, block_tables, qsl, 3, kv_dtype=kv_dtype,
                                          k_scale=k_scale, v_scale=v_scale, backend="reference")
    typed = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2, "int8": torch.int8}[kv_dtype]
    device_codes = torch.from_numpy(codes.copy()).cuda()
    q = torch.from_numpy(queries).cuda()
    for kv, given in ((device_codes.view(typed), None), (device_codes, kv_dtype),
                      ((device_codes[:, :, 0::2].view(typed), device_codes[:, :, 1::2].view(typed)), None)):
        out = rpa.ragged_paged_attention(q, kv, context_lens, block_tables, qsl, 3, kv_dtype=given,
                                         k_scale=k_scale, v_scale=v_scale, backend="gpu")
        assert out.is_cuda
        np.testing.assert_allclose(out.cpu().numpy(), expected, rtol=0, atol=2e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kv_dtype", FORMATS)
def test_write_kv_round_trips_codes(backend, kv_dtype):
    rng = np.random.default_rng(14)
    P, page_size, KVH, D, N = 3, 4, 2, 16, 7
    original = rng.integers(0, 256, (N, 2, KVH, D)).astype(np.uint8)
    if kv_dtype == "int8":
        original[original == 0x80] = 0x81  # -128 is never written
    values = decode(original, kv_dtype)
    original[np.isnan(values)] = 0  # NaN codes have no unique spelling
    k_scale, v_scale = np.array([0.5, 3.0], np.float32), 0.75
    new_k = (decode(original[:, 0], kv_dtype).astype(np.float32) * k_scale[:, None]).astype(np.float32)
    new_v = (decode(original[:, 1], kv_dtype).astype(np.float32) * np.float32(v_scale)).astype(np.float32)
    slots = np.array([5, -1, 0, 11, 5, 7, 2], np.int32)  # token 4 overwrites token 0's slot; token 1 skipped
    cache = np.full((P, page_size, 2 * KVH, D), 0xAB, np.uint8)
    rpa.write_kv(new_k, new_v, slots, cache, kv_dtype=kv_dtype, k_scale=k_scale, v_scale=v_scale, backend=backend)
    expected = np.full_like(cache, 0xAB)
    for i, slot in enumerate(slots):
        if slot >= 0:
            expected[slot // page_size, slot % page_size, 0::2] = original[i, 0]
            expected[slot // page_size, slot % page_size, 1::2] = original[i, 1]
    assert np.array_equal(cache, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_write_kv_separate_float_caches_and_errors(backend):
    rng = np.random.default_rng(15)
    k_cache, v_cache = np.zeros((2, 4, 1, 8), np.float16), np.zeros((2, 4, 1, 8), np.float16)
    keys, values = rng.standard_normal((3, 1, 8)).astype(np.float32), rng.standard_normal((3, 1, 8)).astype(np.float32)
    rpa.write_kv(keys, values, [7, 0, 3], (k_cache, v_cache), backend=backend)
    assert np.array_equal(k_cache[1, 3], keys[0].astype(np.float16)) and np.array_equal(v_cache[0, 3], values[2].astype(np.float16))
    with pytest.raises(rpa.RpaError, match=r"'slot_mapping': element \[1\] is 8"):
        rpa.write_kv(keys, values, [0, 8, 1], (k_cache, v_cache), backend=backend)
    with pytest.raises(ValueError, match="k_cache"):  # a float64 cache could only be written through a copy
        rpa.write_kv(keys, values, [0, 1, 2], (k_cache.astype(np.float64), v_cache), backend=backend)
    with pytest.raises(ValueError, match="kv_dtype"):
        rpa.write_kv(keys, values, [0, 1, 2], (k_cache, v_cache), kv_dtype="fp4", backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_plan_runs_take_the_scales_of_each_run(backend):
    rng = np.random.default_rng(16)
    queries, codes, context_lens, block_tables, qsl = quantised_problem(rng, "fp8_e4m3")
    plan = rpa.Context(backend).plan(queries, codes, context_lens, block_tables, qsl, 3, kv_dtype="fp8_e4m3")
    for k_scale, v_scale in ((0.5, 2.0), (np.array([0.1, 0.3], np.float32), 0.25)):
        got = plan.run(queries, codes, k_scale=k_scale, v_scale=v_scale)
        expected = rpa.ragged_paged_attention(queries, codes, context_lens, block_tables, qsl, 3, kv_dtype="fp8_e4m3",
                                              k_scale=k_scale, v_scale=v_scale, backend=backend)
        assert np.array_equal(got, expected)
