"""Per-call time of rpa from torch and JAX on CUDA arrays, for rpa bench's W1-W3 shapes.

    python3 bench/frameworks.py [W1 W2 W3]   # on a machine with a CUDA GPU, torch, rpa's gpu plugin (and JAX)

Each figure is the time of one call when 32 calls are queued back to back, as `rpa bench`'s planned-run
figure is (median of 10 such groups): CUDA events around the group for torch, the wall clock from the
first dispatch to the last result for JAX. Host work that cannot keep ahead of the GPU shows in it; host
work that overlaps the kernels does not. Columns: the `rpa.torch` op with host metadata of the previous
call (the layers of a step), `Plan.run` of `rpa.torch.plan`, the op with CUDA int32 metadata (device
metadata, bounds: the workload's maxima) queued and as 32 calls captured in one CUDA graph and replayed,
and a jitted `rpa.jax` call (the device-metadata plan of XLA's CUDA handler): one call per jit, 32 calls
in one jit, and 32 calls in one jit with max_query_len/max_context_len (the workload's maxima). Compare
with `rpa bench --backends gpu --workloads W1 W2 W3` (its plan/call and dev-meta columns) run in the same
session on the same card.
"""

import os
import statistics
import sys
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave the GPU's memory to torch too

import torch  # noqa: E402

import rpa  # noqa: E402
import rpa.torch  # noqa: E402
import torch_timing  # noqa: E402  (beside this script)

QH, KVH, D, PAGE = 32, 8, 128, 16
WORKLOADS = {  # (q_len, context_len) per sequence, as bench/workloads.cpp has them
    "W1": [(1, 2048)] * 64,
    "W2": [(1024, 1024)] * 4,
    "W3": [(1, 2048)] * 32 + [(512, 1024)] * 2,
}
CALLS, GROUPS = 32, 10
if sys.argv[1:]:  # the workloads named on the command line, in their order
    unknown = [name for name in sys.argv[1:] if name not in WORKLOADS]
    if unknown:
        sys.exit("unknown workload %s (known: %s)" % (", ".join(unknown), " ".join(WORKLOADS)))
    WORKLOADS = {name: WORKLOADS[name] for name in sys.argv[1:]}


def batch(sequences):
    pages = [(c + PAGE - 1) // PAGE for _, c in sequences]
    W, P = max(pages), sum(pages)
    order = torch.randperm(P, dtype=torch.int32)
    block_tables = torch.zeros(len(sequences), W, dtype=torch.int32)
    used = 0
    for s, n in enumerate(pages):
        block_tables[s, :n] = order[used:used + n]
        used += n
    q_lens = torch.tensor([q for q, _ in sequences], dtype=torch.int32)
    qsl = torch.cat([torch.zeros(1, dtype=torch.int32), torch.cumsum(q_lens, 0, dtype=torch.int32)])
    context_lens = torch.tensor([c for _, c in sequences], dtype=torch.int32)
    queries = torch.randn(int(qsl[-1]), QH, D, device="cuda", dtype=torch.bfloat16)
    kv = torch.randn(P, PAGE, 2 * KVH, D, device="cuda", dtype=torch.bfloat16)
    return queries, kv, context_lens, block_tables, qsl


def torch_ms(fn, calls=CALLS):
    return torch_timing.ms_per_call(fn, calls, GROUPS, warmup=3)


def graph_ms(fn):
    """32 calls of fn captured in one CUDA graph (after a warm-up call), the replay timed with events."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.cuda.graph(graph):
        for _ in range(CALLS):
            fn()
    torch.cuda.synchronize()
    return torch_ms(graph.replay, calls=2) / CALLS


def jax_ms(step, args):
    import jax
    jax.block_until_ready(step(*args))  # compiles
    times = []
    for _ in range(GROUPS):
        start = time.perf_counter()
        for _ in range(CALLS):
            result = step(*args)
        jax.block_until_ready(result)
        times.append((time.perf_counter() - start) * 1e3 / CALLS)
    return statistics.median(times)


def jax_steps():
    """A jitted call, and a jitted step of CALLS calls, each layer taking the last one's output as its
    queries (one dispatch for the whole step, as a jitted model runs its layers); keywords go to each call."""
    try:
        import jax
        import rpa.jax
        rpa.jax._register()
    except ImportError:
        return None, None, None

    def layers(queries, *rest, **bounds):
        for _ in range(CALLS):
            queries = rpa.jax.ragged_paged_attention(queries, *rest, **bounds)
        return queries

    return jax, jax.jit(rpa.jax.ragged_paged_attention), layers


jax, step, layers = jax_steps()
print("workload  torch op  Plan.run  op dev-meta  op graph  jax jit  jax %d-layer jit  same, bounds  (ms per call)"
      % CALLS)
for name, sequences in WORKLOADS.items():
    queries, kv, context_lens, block_tables, qsl = batch(sequences)
    n = len(sequences)
    bounds = dict(max_query_len=max(q for q, _ in sequences), max_context_len=max(c for _, c in sequences))
    out = torch.empty_like(queries)
    op = torch_ms(lambda: rpa.torch.ragged_paged_attention(queries, kv, context_lens, block_tables, qsl, n))
    plan = rpa.torch.plan(queries, kv, context_lens, block_tables, qsl, n, out=out)
    run = torch_ms(lambda: plan.run(queries, kv, out=out))
    on_device = [m.cuda() for m in (context_lens, block_tables, qsl)]
    dev_meta = torch_ms(lambda: rpa.torch.ragged_paged_attention(queries, kv, *on_device, n, **bounds))
    in_graph = graph_ms(lambda: rpa.torch.ragged_paged_attention(queries, kv, *on_device, n, **bounds))
    on_jax = in_layers = with_bounds = float("nan")
    if step is not None:
        gpu = jax.devices("gpu")[0]
        args = [jax.device_put(t.float().cpu().numpy().astype(jax.numpy.bfloat16) if t.is_floating_point()
                               else t.numpy(), gpu) for t in (queries, kv, context_lens, block_tables, qsl)]
        args.append(jax.device_put(torch.tensor([n], dtype=torch.int32).numpy(), gpu))
        on_jax = jax_ms(step, args)
        in_layers = jax_ms(jax.jit(layers), args) / CALLS
        with_bounds = jax_ms(jax.jit(lambda *a: layers(*a, **bounds)), args) / CALLS
    print("%-8s  %8.3f  %8.3f  %11.3f  %8.3f  %7.3f  %16.3f  %12.3f"
          % (name, op, run, dev_meta, in_graph, on_jax, in_layers, with_bounds))
