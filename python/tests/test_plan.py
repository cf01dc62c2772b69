"""rpa.Context, Context.plan and Plan.run; exception classes by status; no hang on a failed context."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import rpa
from oracle import attention, random_problem

BACKENDS = [b for b in ("reference", "simd", "gpu") if rpa.backend_available(b)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_plan_run_32_times_equals_the_one_call_outputs_bitwise(backend):
    rng = np.random.default_rng(21)
    queries, kv, context_lens, block_tables, qsl = random_problem(rng, [1, 5, 1, 3], [40, 9, 300, 20],
                                                                  padding_tokens=2)
    ctx = rpa.Context(backend=backend)
    plan = ctx.plan(queries, kv, context_lens, block_tables, qsl, 4, sliding_window=64, return_lse=True)
    for layer in range(32):
        q = rng.standard_normal(queries.shape).astype(np.float32)
        k = rng.standard_normal(kv.shape).astype(np.float32)
        out, lse = plan.run(q, k, softmax_scale=0.2 + layer / 100)
        expected_out, expected_lse = ctx.attention(q, k, context_lens, block_tables, qsl, 4, sliding_window=64,
                                                   softmax_scale=0.2 + layer / 100, return_lse=True)
        assert np.array_equal(out, expected_out)
        assert np.array_equal(lse, expected_lse)
    oracle_out, _ = attention(q, k, context_lens, block_tables, qsl, 4, softmax_scale=0.2 + 31 / 100,
                              sliding_window=64)
    rows = slice(qsl[0], qsl[4])
    assert np.max(np.abs(out[rows] - oracle_out[rows])) <= 2e-5


def test_plan_runs_from_threads_and_rejects_other_layouts():
    rng = np.random.default_rng(22)
    queries, kv, context_lens, block_tables, qsl = random_problem(rng, [2, 3], [6, 9])
    ctx = rpa.Context(backend="reference")
    plan = ctx.plan(queries, kv, context_lens, block_tables, qsl, 2)
    inputs = [(rng.standard_normal(queries.shape).astype(np.float32), kv) for _ in range(4)]
    results = [None] * 4

    def work(i):
        results[i] = plan.run(*inputs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (q, k), got in zip(inputs, results):
        assert np.array_equal(got, ctx.attention(q, k, context_lens, block_tables, qsl, 2))
    with pytest.raises(rpa.InvalidArgumentError, match="'queries': dtype is f16, but the plan was made for f32"):
        plan.run(queries.astype(np.float16), kv)


def test_runs_after_the_first_swap_pointers_but_other_layouts_take_the_checked_path():
    rng = np.random.default_rng(27)
    queries, kv, context_lens, block_tables, qsl = random_problem(rng, [2, 3], [6, 9])
    ctx = rpa.Context(backend="reference")
    out = np.empty_like(queries)
    plan = ctx.plan(queries, kv, context_lens, block_tables, qsl, 2, out=out)
    expected = ctx.attention(queries, kv, context_lens, block_tables, qsl, 2)
    for _ in range(2):  # the first run learns the layouts, the second swaps pointers only
        out[:] = np.nan
        assert plan.run(queries, kv, out=out) is out and np.array_equal(out, expected)
    strided = np.zeros(queries.shape[:2] + (2 * queries.shape[2],), np.float32)[:, :, :queries.shape[2]]
    strided[...] = queries
    with pytest.raises(rpa.InvalidArgumentError, match="'queries'.*plan"):
        plan.run(strided, kv, out=out)
    assert np.array_equal(plan.run(queries.astype(np.float64), kv), expected)  # narrowed: a copy, still right
    assert np.array_equal(plan.run(queries, kv[::-1][::-1]), expected)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out"):
        plan.run(queries, kv, out=out)


def test_exception_classes_follow_the_status():
    assert issubclass(rpa.InvalidArgumentError, ValueError)
    for error in (rpa.UnsupportedError, rpa.UnavailableError, rpa.OutOfMemoryError, rpa.DeviceError,
                  rpa.InternalError):
        assert issubclass(error, RuntimeError) and issubclass(error, rpa.RpaError)
    with pytest.raises(rpa.InvalidArgumentError, match="num_threads") as caught:
        rpa.Context(backend="simd", num_threads=-1)
    assert caught.value.status == "invalid argument"
    with pytest.raises(rpa.UnavailableError) as caught:  # no plugin, or no such device
        rpa.Context(backend="gpu", device=10**6)
    assert caught.value.status == "unavailable"


def test_a_failed_context_creation_raises_instead_of_hanging():
    # The module-level function creates its context under the binding's lock; a failure used to take the
    # lock again and hang. No plugin is found in an empty plugin path, so "gpu" must fail there.
    script = ("import rpa, numpy as np\n"
              "try:\n"
              "    rpa.ragged_paged_attention(np.zeros((1, 1, 8), np.float32), np.zeros((1, 1, 2, 8), np.float32),\n"
              "                               [1], [[0]], [0, 1], 1, backend='gpu')\n"
              "except rpa.UnavailableError as error:\n"
              "    print('raised:', error)\n")
    env = dict(os.environ, RPA_PLUGIN_PATH=os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "raised:" in done.stdout and "plugin" in done.stdout
