"""Per-call time of rpa's torch op and of a planned run on CUDA tensors, for rpa bench's W1-W3 shapes.

    python3 bench/frameworks.py       # on a machine with a CUDA GPU, torch and rpa's gpu plugin

Each figure is the median over 30 timed iterations of one call, measured with CUDA events around the
call alone (host work included: a call that cannot keep ahead of the GPU shows it). Compare with
`rpa bench --backends gpu --workloads W1 W2 W3` (planned runs, device events around the kernels).
"""

import statistics

import torch

import rpa
import rpa.torch

QH, KVH, D, PAGE = 32, 8, 128, 16
WORKLOADS = {  # (q_len, context_len) per sequence, as bench/workloads.cpp has them
    "W1": [(1, 2048)] * 64,
    "W2": [(1024, 1024)] * 4,
    "W3": [(1, 2048)] * 32 + [(512, 1024)] * 2,
}


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


def median_ms(fn, iterations=30):
    for _ in range(3):
        fn()
    times = []
    for _ in range(iterations):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


print("workload  torch op (ms)  Plan.run (ms)  op / run")
for name, sequences in WORKLOADS.items():
    queries, kv, context_lens, block_tables, qsl = batch(sequences)
    n = len(sequences)
    out = torch.empty_like(queries)
    op = median_ms(lambda: rpa.torch.ragged_paged_attention(queries, kv, context_lens, block_tables, qsl, n))
    plan = rpa.Context(backend="gpu").plan(queries, kv, context_lens, block_tables, qsl, n, out=out)
    run = median_ms(lambda: plan.run(queries, kv, out=out))
    print("%-8s  %13.3f  %13.3f  %8.3f" % (name, op, run, op / run))
