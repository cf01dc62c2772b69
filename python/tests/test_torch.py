"""rpa.torch: the custom op in eager mode, under torch.compile and in CUDA graphs, on CPU and CUDA tensors.
Skipped where torch is missing (CI); the GPU machine runs it."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import rpa  # noqa: E402
import rpa.torch  # noqa: E402
from oracle import attention, random_problem  # noqa: E402

CUDA = torch.cuda.is_available() and rpa.backend_available("gpu")
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])
TOLERANCE = 2e-5


def problem(device, seed=21, dtype=torch.float32, **kw):
    queries, kv, context_lens, block_tables, qsl = random_problem(np.random.default_rng(seed), [1, 9, 0, 4, 1],
                                                                  [33, 9, 5, 40, 70], **kw)
    q = torch.from_numpy(queries).to(device=device, dtype=dtype)
    kv_t = torch.from_numpy(kv).to(device=device, dtype=dtype)
    meta = [torch.from_numpy(a) for a in (context_lens, block_tables, qsl)]
    expected, expected_lse = attention(q.float().cpu().numpy(), kv_t.float().cpu().numpy(), context_lens,
                                       block_tables, qsl, 5)
    rows = np.zeros(len(queries), bool)
    rows[:qsl[5]] = True
    return (q, kv_t, *meta), expected, expected_lse, rows


@pytest.mark.parametrize("device", DEVICES)
def test_eager_matches_oracle(device):
    args, expected, expected_lse, rows = problem(device)
    out, lse = rpa.torch.ragged_paged_attention(*args, 5, return_lse=True)
    assert isinstance(out, torch.Tensor) and out.device.type == device and out.dtype == torch.float32
    assert lse.device.type == device and lse.dtype == torch.float32
    assert np.abs(out.cpu().numpy()[rows] - expected[rows]).max() <= TOLERANCE
    assert np.abs(lse.cpu().numpy()[rows] - expected_lse[rows]).max() <= TOLERANCE
    assert torch.all(out[~torch.from_numpy(rows).to(device)] == 0)


@pytest.mark.parametrize("device", DEVICES)
def test_bfloat16_vllm_cache_views(device):
    (q, kv, *meta), expected, _, rows = problem(device, dtype=torch.bfloat16)
    P, page, two_kvh, D = kv.shape
    cache = torch.stack([kv[:, :, 0::2], kv[:, :, 1::2]])  # vLLM's [2, P, page, KVH, D]
    out = rpa.torch.ragged_paged_attention(q, (cache[0], cache[1]), *meta, torch.tensor([5]))
    assert out.dtype == torch.bfloat16 and out.device.type == device
    assert np.abs(out.float().cpu().numpy()[rows] - expected[rows]).max() <= 4 / 256  # one bf16 rounding


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_equals_eager(device):
    args, _, _, _ = problem(device, seed=22)

    def layer(q, kv, context_lens, block_tables, qsl):
        return rpa.torch.ragged_paged_attention(q * 0.5, kv, context_lens, block_tables, qsl, 5,
                                                sliding_window=8, logits_soft_cap=2.0) + 1.0

    # Inductor on CUDA; on the CPU aot_eager traces the same graph (op and fake kernel) without Inductor's
    # C++ compile, which would dominate the GPU machine's short test budget.
    compiled = torch.compile(layer, fullgraph=True, backend="inductor" if device == "cuda" else "aot_eager")
    assert torch.equal(compiled(*args), layer(*args))


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device and rpa's gpu plugin")
def test_cuda_metadata_int64_and_a_side_stream():
    (q, kv, *meta), expected, _, rows = problem("cuda", seed=23)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):  # produced and consumed on the side stream: no default-stream sync needed
        q2 = q * 2.0
        out = rpa.torch.ragged_paged_attention(q2, kv, *[m.to("cuda", torch.int64) for m in meta], 5)
    side.synchronize()
    want, _ = attention(q2.cpu().numpy(), kv.cpu().numpy(), *[m.numpy() for m in meta], 5)
    assert np.abs(out.cpu().numpy()[rows] - want[rows]).max() <= TOLERANCE


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device and rpa's gpu plugin")
def test_a_call_with_the_metadata_of_the_last_copies_nothing():
    from torch.profiler import ProfilerActivity, profile
    (q, kv, *meta), _, _, _ = problem("cuda", seed=24)
    meta = [m.to("cuda") for m in meta]
    rpa.torch.ragged_paged_attention(q, kv, *meta, 5)  # plans (device metadata: int32 on the GPU)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):  # the next layers of a step: the op's cached plan, kernels only
            rpa.torch.ragged_paged_attention(q, kv, *meta, 5)
        torch.cuda.synchronize()
    copies = [e.name for e in prof.events() if "memcpy" in e.name.lower()]
    assert not copies, copies


HOST_METADATA = [("cpu", torch.int32)] + ([("cuda", torch.int64)] if CUDA else [])


@pytest.mark.parametrize("device,dtype", HOST_METADATA)
def test_host_metadata_plans_once_per_metadata_and_sees_every_change(device, dtype):
    (q, kv, *meta), _, _, rows = problem(device, seed=28)
    meta = [m.to(device, dtype) for m in meta]
    context_lens, block_tables, qsl = meta

    def expected():
        out, _ = attention(q.cpu().numpy(), kv.cpu().numpy(), context_lens.cpu().numpy(),
                           block_tables.cpu().numpy(), qsl.cpu().numpy(), 5)
        return out[rows]

    def call():
        out = rpa.torch.ragged_paged_attention(q, kv, context_lens, block_tables, qsl, 5)
        assert np.abs(out.cpu().numpy()[rows] - expected()).max() <= TOLERANCE
        return [c.plan for c in rpa.torch._plans.values()]

    first = call()
    assert call() == first  # the same metadata: the same plan
    context_lens[3] -= 1  # through torch: the version counter moves
    second = call()
    assert second != first
    if device == "cpu":  # a write torch does not count: the values are compared
        context_lens.numpy()[3] -= 1
        assert call() != second
    assert call() == call()


# Another batch of problem()'s shapes, for the same contexts (their slots hold keys, the rest NaN):
# sequence 1 now has 3 query tokens, sequence 3 four; rows from 9 on are padding.
OTHER_LENS = [33, 9, 5, 40, 70]
OTHER_QSL = [0, 1, 4, 4, 8, 9]


def device_metadata(meta):
    return [m.to("cuda", torch.int32) for m in meta]


def expected_rows(q, kv, context_lens, block_tables, qsl):
    """The oracle's rows of the batch the metadata tensors hold now, and how many rows it covers."""
    lens, tables, starts = (m.cpu().numpy() for m in (context_lens, block_tables, qsl))
    want, _ = attention(q.float().cpu().numpy(), kv.float().cpu().numpy(), lens, tables, starts, 5)
    return want[:starts[5]], int(starts[5])


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device and rpa's gpu plugin")
def test_device_metadata_op_reads_the_values_of_each_call_with_one_plan():
    from torch.profiler import ProfilerActivity, profile
    (q, kv, *meta), _, _, _ = problem("cuda", seed=24)
    context_lens, block_tables, qsl = device_metadata(meta)
    plans = []
    for step in range(3):
        if step == 1:  # the next step's batch, written in place by torch
            context_lens.copy_(torch.tensor(OTHER_LENS))
            qsl.copy_(torch.tensor(OTHER_QSL))
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            out = rpa.torch.ragged_paged_attention(q, kv, context_lens, block_tables, qsl, 5, max_query_len=12)
            torch.cuda.synchronize()
        if step:  # planned in step 0: nothing read back or uploaded since
            assert not [e.name for e in prof.events() if "memcpy" in e.name.lower()]
        want, covered = expected_rows(q, kv, context_lens, block_tables, qsl)
        assert np.abs(out.cpu().numpy()[:covered] - want).max() <= TOLERANCE
        assert torch.all(out[covered:] == 0)
        plans.append(list(rpa.torch._device_plans.values()))
    assert plans[0] == plans[1] == plans[2] and len(plans[0]) >= 1
    rpa.torch.check_metadata()


def capture(fn):
    """fn() captured in a CUDA graph after one eager warm-up call, as torch's docs do it; (graph, output)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device and rpa's gpu plugin")
@pytest.mark.parametrize("lse", [False, True])
def test_the_op_in_a_captured_cuda_graph_follows_the_metadata_of_each_replay(lse):
    (q, kv, *meta), _, _, _ = problem("cuda", seed=29)
    context_lens, block_tables, qsl = device_metadata(meta)
    static_q = q.clone()

    def layers():  # two layers of a step: the second plan lookup finds the first's plan
        first = rpa.torch.ragged_paged_attention(static_q, kv, context_lens, block_tables, qsl, 5, return_lse=lse)
        first = first[0] if lse else first
        return rpa.torch.ragged_paged_attention(first, kv, context_lens, block_tables, qsl, 5, return_lse=lse)

    graph, out = capture(layers)
    out, out_lse = out if lse else (out, None)
    batches = [(meta[0], meta[2]), (torch.tensor(OTHER_LENS), torch.tensor(OTHER_QSL))]
    for step, (lens, starts) in enumerate(batches * 2):
        context_lens.copy_(lens)
        qsl.copy_(starts)
        static_q.copy_(q * (1 + step))
        graph.replay()
        torch.cuda.synchronize()
        first, covered = expected_rows(static_q, kv, context_lens, block_tables, qsl)
        hidden = torch.zeros_like(q)
        hidden[:covered] = torch.from_numpy(first).to(hidden)
        want, _ = expected_rows(hidden, kv, context_lens, block_tables, qsl)
        assert np.abs(out.cpu().numpy()[:covered] - want).max() <= 1e-4
        assert torch.all(out[covered:] == 0)
        # The same call eagerly, after the replay: the graph's result (one plan, one schedule).
        eager = layers()[0] if lse else layers()
        assert (eager - out).abs().max().item() <= 1e-6
        if lse:
            _, want_lse = attention(hidden.cpu().numpy(), kv.cpu().numpy(), lens.numpy(),
                                    block_tables.cpu().numpy(), starts.numpy(), 5)
            assert np.abs(out_lse.cpu().numpy()[:covered] - want_lse[:covered]).max() <= 1e-4
    assert any(p in rpa.torch._captured for p in rpa.torch._device_plans.values())
    rpa.torch.check_metadata()


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device and rpa's gpu plugin")
def test_capture_without_a_warm_up_or_with_host_metadata_is_refused():
    (q, kv, *meta), _, _, _ = problem("cuda", seed=31, QH=8)  # shapes no other test plans
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    cases = [(device_metadata(meta), 5, "run the op once with the same tensors before capturing"),
             (meta, 5, "int32 tensors on the queries' GPU"),
             ([m.to("cuda", torch.int64) for m in meta], 5, "int32 tensors on the queries' GPU"),
             (device_metadata(meta), torch.tensor([5], device="cuda"), "num_seqs: a CUDA tensor")]
    for metadata, num_seqs, message in cases:
        with pytest.raises(RuntimeError, match=message):
            with torch.cuda.stream(side), torch.cuda.graph(torch.cuda.CUDAGraph()):
                rpa.torch.ragged_paged_attention(q, kv, *metadata, num_seqs)
        torch.cuda.synchronize()
    # After a warm-up the same capture works.
    metadata = device_metadata(meta)
    rpa.torch.ragged_paged_attention(q, kv, *metadata, 5)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(side), torch.cuda.graph(graph):
        out = rpa.torch.ragged_paged_attention(q, kv, *metadata, 5)
    graph.replay()
    torch.cuda.synchronize()
    want, covered = expected_rows(q, kv, *metadata)
    assert np.abs(out.cpu().numpy()[:covered] - want).max() <= TOLERANCE


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device and rpa's gpu plugin")
def test_reduce_overhead_compile_replays_with_the_metadata_of_each_call():
    from torch._dynamo.utils import counters
    (q, kv, *meta), _, _, _ = problem("cuda", seed=32, D=64)  # shapes no other test plans
    context_lens, block_tables, qsl = device_metadata(meta)
    for static in (kv, context_lens, block_tables, qsl):  # the engine's buffers: fixed addresses
        torch._dynamo.mark_static_address(static)

    def layer(q, kv, context_lens, block_tables, qsl):
        return rpa.torch.ragged_paged_attention(q * 0.5, kv, context_lens, block_tables, qsl, 5,
                                                max_query_len=12) + 1.0

    counters.clear()
    compiled = torch.compile(layer, mode="reduce-overhead")
    batches = [(meta[0], meta[2]), (torch.tensor(OTHER_LENS), torch.tensor(OTHER_QSL))]
    for step, (lens, starts) in enumerate(batches * 3):  # warm-up, record, then replays
        context_lens.copy_(lens)
        qsl.copy_(starts)
        out = compiled(q * (1 + step), kv, context_lens, block_tables, qsl)
        torch.cuda.synchronize()
        want, covered = expected_rows(q * (1 + step) * 0.5, kv, context_lens, block_tables, qsl)
        assert np.abs(out.cpu().numpy()[:covered] - (want + 1.0)).max() <= 1e-4
        assert torch.all(out[covered:] == 1.0)
    assert not counters["inductor"]["cudagraph_skips"], dict(counters["inductor"])
    # The op ran inside the capture of cudagraph trees (and so did not raise there).
    assert any(p in rpa.torch._captured for p in rpa.torch._device_plans.values())


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device and rpa's gpu plugin")
def test_device_metadata_errors_reach_the_caller():
    (q, kv, *meta), _, _, _ = problem("cuda", seed=33, KVH=1)  # shapes no other test plans
    context_lens, block_tables, qsl = device_metadata(meta)
    want, _ = expected_rows(q, kv, context_lens, block_tables, qsl)
    rpa.torch.ragged_paged_attention(q, kv, context_lens, block_tables, qsl, 5)
    rpa.torch.check_metadata()
    block_tables[3, 0] = kv.shape[0]  # a page outside the pool: sequence 3 is skipped and recorded
    out = rpa.torch.ragged_paged_attention(q, kv, context_lens, block_tables, qsl, 5).cpu().numpy()
    message = r"argument 'block_tables': element \[3, 0\] is %d" % kv.shape[0]
    with pytest.raises(rpa.InvalidArgumentError, match=message):
        rpa.torch.check_metadata()
    rpa.torch.check_metadata()  # cleared
    good = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14]  # the rows of sequences 0-2 and 4 (3 holds rows 10-13)
    assert np.abs(out[good] - want[good]).max() <= TOLERANCE
    rpa.torch.CHECK_METADATA = True
    try:
        with pytest.raises(rpa.InvalidArgumentError, match=message):
            rpa.torch.ragged_paged_attention(q, kv, context_lens, block_tables, qsl, 5)
    finally:
        rpa.torch.CHECK_METADATA = False


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device and rpa's gpu plugin")
def test_a_plan_replays_in_a_captured_cuda_graph_without_copies():
    from torch.profiler import ProfilerActivity, profile
    (q, kv, *meta), _, _, _ = problem("cuda", seed=25)
    static_q, out = q.clone(), torch.empty_like(q)
    plan = rpa.torch.plan(static_q, kv, *meta, 5, out=out)  # metadata read and uploaded here, once
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        plan.run(static_q, kv, out=out)  # warm up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        plan.run(static_q, kv, out=out)
    for scale in (0.5, 2.0):
        static_q.copy_(q * scale)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, rpa.torch.ragged_paged_attention(q * scale, kv, *meta, 5))
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        plan.run(static_q, kv, out=out)
        torch.cuda.synchronize()
    assert not [e.name for e in prof.events() if "memcpy" in e.name.lower()]


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device and rpa's gpu plugin")
def test_device_metadata_is_read_at_every_graph_replay():
    (q, kv, *meta), expected, _, rows = problem("cuda", seed=26)
    context_lens, block_tables, qsl = [m.to("cuda", torch.int32) for m in meta]
    out = torch.empty_like(q)
    plan = rpa.torch.plan(q, kv, context_lens, block_tables, qsl, 5, out=out, device_metadata=True,
                          max_query_len=12, max_context_len=0)
    plan.run(q, kv, out=out)
    torch.cuda.synchronize()
    assert np.abs(out.cpu().numpy()[rows] - expected[rows]).max() <= TOLERANCE
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        plan.run(q, kv, out=out)
    torch.cuda.current_stream().wait_stream(side)
    with torch.cuda.graph(graph):
        plan.run(q, kv, out=out)
    # Other metadata of the same shapes, written in place (the same contexts: their slots hold keys, the
    # rest NaN): sequence 1 now has 3 query tokens, sequence 3 four, rows from 9 on are padding.
    new_lens = torch.tensor([33, 9, 5, 40, 70], dtype=torch.int32)
    new_qsl = torch.tensor([0, 1, 4, 4, 8, 9], dtype=torch.int32)
    context_lens.copy_(new_lens)
    qsl.copy_(new_qsl)
    graph.replay()
    torch.cuda.synchronize()
    want, _ = attention(q.cpu().numpy(), kv.cpu().numpy(), new_lens.numpy(), block_tables.cpu().numpy(),
                        new_qsl.numpy(), 5)
    assert np.abs(out.cpu().numpy()[:9] - want[:9]).max() <= TOLERANCE
    assert torch.all(out[9:] == 0)
    plan.check()
    # A page outside the pool: the run skips that sequence and check() names the entry.
    block_tables[3, 0] = kv.shape[0]
    graph.replay()
    with pytest.raises(rpa.InvalidArgumentError, match=r"argument 'block_tables': element \[3, 0\] is %d" % kv.shape[0]):
        plan.check()
    plan.check()  # cleared


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device and rpa's gpu plugin")
def test_write_kv_into_a_cuda_cache_in_place():
    gen = torch.Generator().manual_seed(30)
    keys, values = torch.randn(3, 2, 8, generator=gen), torch.randn(3, 2, 8, generator=gen)
    for slots in (torch.tensor([7, -1, 3]), torch.tensor([7, -1, 3], device="cuda")):
        cache = torch.zeros(2, 4, 4, 8, dtype=torch.bfloat16, device="cuda")  # combined: K at 2h, V at 2h+1
        address = cache.data_ptr()
        rpa.write_kv(keys.cuda(), values.cuda(), slots, cache)
        assert cache.data_ptr() == address
        expected = torch.zeros(2, 4, 4, 8, dtype=torch.bfloat16)
        expected[1, 3, 0::2], expected[1, 3, 1::2] = keys[0].bfloat16(), values[0].bfloat16()
        expected[0, 3, 0::2], expected[0, 3, 1::2] = keys[2].bfloat16(), values[2].bfloat16()
        assert torch.equal(cache.cpu(), expected)
    with pytest.raises(ValueError, match="kv_pages: lives on the host"):
        rpa.write_kv(keys.cuda(), values.cuda(), [0, 1, 2], torch.zeros(2, 4, 4, 8))
