"""rpa.jax: the XLA FFI custom call under jit on the CPU and GPU platforms, against JAX's own
ref_ragged_paged_attention and the fp64 oracle, and the seed's signature with every keyword.
Skipped where jax or the FFI module is missing (CI); the GPU machine runs it."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = jax.numpy
import rpa  # noqa: E402

try:
    import rpa.jax as rpa_jax
    rpa_jax._register()
except ImportError as e:  # built without jaxlib's headers
    pytest.skip(str(e), allow_module_level=True)
from oracle import attention, random_problem  # noqa: E402

PLATFORMS = ["cpu"] + (["gpu"] if any(d.platform == "gpu" for d in jax.devices()) and
                       rpa.backend_available("gpu") else [])


def on(platform, *arrays):
    device = jax.devices(platform)[0]
    return [jax.device_put(a, device) for a in arrays]


def fits_reference(rng, S, page_size):
    """A random batch JAX's reference accepts: every block-table entry valid, q_len <= context_len."""
    q_lens = rng.integers(1, 9, S)
    ctx = q_lens + rng.integers(0, 50, S)
    return random_problem(rng, list(q_lens), list(ctx), QH=8, KVH=2, D=128, page_size=page_size,
                          padding_tokens=0), q_lens


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("seed", range(4))
def test_jit_matches_jax_reference(platform, seed):
    try:
        from jax.experimental.pallas.ops.tpu.ragged_paged_attention import ref_ragged_paged_attention
    except ImportError:  # later JAX made the module a package
        from jax.experimental.pallas.ops.tpu.ragged_paged_attention.kernel import ref_ragged_paged_attention
    rng = np.random.default_rng(seed)
    (queries, kv, context_lens, block_tables, qsl), _ = fits_reference(rng, S=3, page_size=16)
    kv = np.nan_to_num(kv)  # the reference multiplies masked keys by 0: NaN would leak there, not here
    block_tables = np.where(block_tables < 0, 0, block_tables).astype(np.int32)
    window = [None, 16, None, 5][seed]
    cap = [None, None, 20.0, 3.0][seed]
    scale = 1 / np.sqrt(128)
    num_seqs = np.array([3], np.int32)
    args = on(platform, queries, kv, context_lens, block_tables, qsl, num_seqs)
    ours = jax.jit(lambda *a: rpa_jax.ragged_page_attention_v2(*a, softmax_scale=scale, sliding_window=window,
                                                                logits_soft_cap=cap))(*args)
    assert ours.devices() == {jax.devices(platform)[0]}
    with jax.default_device(jax.devices("cpu")[0]):
        theirs = ref_ragged_paged_attention(jnp.asarray(queries), jnp.asarray(kv), jnp.asarray(context_lens),
                                            jnp.asarray(block_tables), jnp.asarray(qsl), jnp.asarray(num_seqs),
                                            sm_scale=scale, sliding_window=window, soft_cap=cap)
    T = int(qsl[3])
    assert np.abs(np.asarray(ours)[:T] - np.asarray(theirs)).max() <= 2e-5


@pytest.mark.parametrize("platform", PLATFORMS)
def test_seed_signature_every_keyword_bf16(platform):
    rng = np.random.default_rng(7)
    queries, kv, context_lens, block_tables, qsl = random_problem(rng, [1, 6, 3], [30, 6, 50], QH=8, KVH=2, D=64)
    sinks = rng.standard_normal(8).astype(np.float32)
    q16, kv16 = jnp.asarray(queries, jnp.bfloat16), jnp.asarray(kv, jnp.bfloat16)
    args = on(platform, q16, kv16, context_lens, block_tables, qsl, np.array([3], np.int32), sinks)

    @jax.jit
    def step(q, kv, cl, bt, qsl, num_seqs, sinks):
        return rpa_jax.ragged_page_attention_v2(
            q, kv, cl, bt, qsl, num_seqs, softmax_scale=0.2, logits_soft_cap=4.0, compute_dtype=jnp.float32,
            optimized=True, sliding_window=12, softmax_aux=sinks, mask_value=-1e30, num_kv_pages_per_block=4,
            num_queries_per_block=8, vmem_limit_bytes=1 << 20, num_warps=4, num_stages=2)

    out = step(*args)
    assert out.dtype == jnp.bfloat16 and out.shape == queries.shape
    expected, _ = attention(np.asarray(q16, np.float32), np.asarray(kv16, np.float32), context_lens, block_tables,
                            qsl, 3, softmax_scale=0.2, logits_soft_cap=4.0, sliding_window=12,
                            sinks=sinks.reshape(8, 1))
    got = np.asarray(out, np.float32)
    assert np.abs(got[:10] - expected[:10]).max() <= 4 / 256
    assert np.all(got[10:] == 0)  # padding rows: 0, where the seed writes attention values


@pytest.mark.parametrize("platform", PLATFORMS)
def test_num_seqs_on_device_does_not_retrace(platform):
    rng = np.random.default_rng(8)
    queries, kv, context_lens, block_tables, qsl = random_problem(rng, [2, 3], [9, 12])
    traces = []

    @jax.jit
    def step(*a):
        traces.append(1)
        return rpa_jax.ragged_paged_attention(*a, return_lse=True)

    outs = [step(*on(platform, queries, kv, context_lens, block_tables, qsl, np.array([n], np.int32)))
            for n in (2, 1)]
    assert len(traces) == 1
    assert np.all(np.asarray(outs[1][0])[2:] == 0) and not np.all(np.asarray(outs[0][0])[2:5] == 0)
    expected, expected_lse = attention(queries, kv, context_lens, block_tables, qsl, 2)
    assert np.abs(np.asarray(outs[0][0])[:5] - expected[:5]).max() <= 2e-5
    assert np.abs(np.asarray(outs[0][1])[:5] - expected_lse[:5]).max() <= 2e-5


@pytest.mark.parametrize("platform", PLATFORMS)
def test_bad_metadata_is_an_error_naming_it(platform):
    rng = np.random.default_rng(9)
    queries, kv, context_lens, block_tables, qsl = random_problem(rng, [2], [9])
    block_tables[0, 0] = 10**6
    # On CUDA only a checked call reads the device's record back (the CPU platform always validates).
    checked = jax.jit(lambda *a: rpa_jax.ragged_paged_attention(*a, check_metadata=True))
    with pytest.raises(Exception, match="block_tables"):
        jax.block_until_ready(checked(*on(platform, queries, kv, context_lens, block_tables, qsl,
                                          np.array([1], np.int32))))


@pytest.mark.skipif("gpu" not in PLATFORMS, reason="needs a GPU")
def test_gpu_bounds_give_the_same_result_and_a_sequence_beyond_them_is_reported():
    rng = np.random.default_rng(13)
    queries, kv, context_lens, block_tables, qsl = random_problem(rng, [1, 1, 3], [9, 40, 20])
    args = on("gpu", queries, kv, context_lens, block_tables, qsl, np.array([3], np.int32))
    expected, _ = attention(queries, kv, context_lens, block_tables, qsl, 3)
    tight = jax.jit(lambda *a: rpa_jax.ragged_paged_attention(*a, max_query_len=3, max_context_len=40))
    assert np.abs(np.asarray(tight(*args))[:5] - expected[:5]).max() <= 2e-5
    decode = jax.jit(lambda *a: rpa_jax.ragged_paged_attention(*a, max_query_len=1, check_metadata=True))
    with pytest.raises(Exception, match="query_start_loc.*more than max_query_len = 1"):
        jax.block_until_ready(decode(*args))
    with pytest.raises(ValueError, match="max_query_len"):
        rpa_jax.ragged_paged_attention(*args, max_query_len=-1)


def test_cpu_platform_refuses_the_gpu_backend():
    rng = np.random.default_rng(14)
    queries, kv, context_lens, block_tables, qsl = random_problem(rng, [2], [9])
    args = on("cpu", queries, kv, context_lens, block_tables, qsl, np.array([1], np.int32))
    with pytest.raises(Exception, match="simd or reference backend, not gpu"):
        jax.block_until_ready(jax.jit(lambda *a: rpa_jax.ragged_paged_attention(*a, backend="gpu"))(*args))


@pytest.mark.skipif("gpu" not in PLATFORMS, reason="needs a GPU")
def test_unchecked_gpu_call_skips_a_bad_sequence_and_computes_the_others():
    rng = np.random.default_rng(11)
    queries, kv, context_lens, block_tables, qsl = random_problem(rng, [2, 3], [9, 40])
    bad = block_tables.copy()
    bad[0, 0] = 10**6
    out = jax.jit(rpa_jax.ragged_paged_attention)(*on("gpu", queries, kv, context_lens, bad, qsl,
                                                      np.array([2], np.int32)))
    expected, _ = attention(queries, kv, context_lens, block_tables, qsl, 2)
    got = np.asarray(out)  # the rows of sequence 0 are not written (XLA's buffer keeps what it held)
    assert np.abs(got[2:5] - expected[2:5]).max() <= 2e-5


_COMMAND_BUFFER_SCRIPT = """
import glob, os, sys
import numpy as np, jax
sys.path.insert(0, sys.argv[1])
import rpa.jax as rpa_jax
from oracle import attention, random_problem
rng = np.random.default_rng(12)
queries, kv, context_lens, block_tables, qsl = random_problem(rng, [1, 4], [30, 20])
step = jax.jit(lambda q, kv, cl, bt, qsl, n: rpa_jax.ragged_paged_attention(
    rpa_jax.ragged_paged_attention(q, kv, cl, bt, qsl, n), kv, cl, bt, qsl, n))
gpu = jax.devices("gpu")[0]
for lens in (context_lens, context_lens - 1):  # new values in place of the recorded ones
    args = [jax.device_put(a, gpu) for a in (queries, kv, lens, block_tables, qsl, np.array([2], np.int32))]
    got = np.asarray(step(*args))
    first, _ = attention(queries, kv, lens, block_tables, qsl, 2)
    expected, _ = attention(first, kv, lens, block_tables, qsl, 2)
    assert np.abs(got[:5] - expected[:5]).max() <= 2e-5, np.abs(got[:5] - expected[:5]).max()
# XLA converts thunks, not HLO, into command buffers: the profile shows whether it launched a graph.
with jax.profiler.trace(sys.argv[2]):
    jax.block_until_ready(step(*args))
files = [f for f in glob.glob(sys.argv[2] + "/**/*", recursive=True) if os.path.isfile(f)]
launches = sum(open(f, "rb").read().count(b"GraphLaunch") for f in files)
print("graph launches in the profile:", launches, files)
assert launches > 0
print("ok")
"""


@pytest.mark.skipif("gpu" not in PLATFORMS, reason="needs a GPU")
def test_xla_runs_the_gpu_call_in_a_command_buffer(tmp_path):
    import os
    import subprocess
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, XLA_FLAGS="--xla_gpu_enable_command_buffer=FUSION,CUSTOM_CALL "
               "--xla_gpu_graph_min_graph_size=1",
               PYTHONPATH=os.pathsep.join([here] + sys.path))
    result = subprocess.run([sys.executable, "-c", _COMMAND_BUFFER_SCRIPT, here, str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=300)
    print(result.stdout)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stdout + result.stderr[-3000:]


def test_generic_entry_point_takes_jax_arrays():
    rng = np.random.default_rng(10)
    queries, kv, context_lens, block_tables, qsl = random_problem(rng, [2, 1], [5, 7])
    out = rpa.ragged_paged_attention(jnp.asarray(queries), jnp.asarray(kv), context_lens, block_tables, qsl, 2)
    assert isinstance(out, jax.Array)
    expected, _ = attention(queries, kv, context_lens, block_tables, qsl, 2)
    assert np.abs(np.asarray(out)[:3] - expected[:3]).max() <= 2e-5
