"""Causal prefill on the GPU: rpa (paged cache, a planned run) against torch's dense SDPA, in one run.

    python3 bench/prefill_sweep.py     # on a machine with a CUDA GPU, torch and rpa's gpu plugin

bf16 queries, cache and output; QH 32, KVH 8, D 128, page 16 (rpa bench's shapes); 1, 4 and 16 sequences
of 512 to 8192 new tokens each (no earlier context). SDPA gets the same rows as dense [B, H, L, D]
tensors (causal, enable_gqa), so it reads no pages. Each figure is the median over 5 groups of back-to-
back calls (CUDA events around a group of at least ~2 ms); TFLOP/s counts the causal half's products
(4 D flops per visible (query, key) pair and head). Set RPA_GPU_MATRIX_CORES to compare rpa's kernels.
"""


import torch
import torch.nn.functional as F

import rpa  # noqa: F401
import rpa.torch
import torch_timing  # beside this script

QH, KVH, D, PAGE = 32, 8, 128, 16
GROUPS = 5


def ms_per_call(fn):
    # One timed call sizes the groups: at least ~2 ms each, at most 64 calls.
    one = torch_timing.ms_per_call(fn, calls=1, groups=1, warmup=1)
    return torch_timing.ms_per_call(fn, max(1, min(64, int(2.0 / max(one, 1e-3)) + 1)), GROUPS, warmup=0)


def case(seqs, length):
    pages = (length + PAGE - 1) // PAGE
    order = torch.randperm(seqs * pages, dtype=torch.int32)
    block_tables = order.reshape(seqs, pages).contiguous()
    context_lens = torch.full((seqs,), length, dtype=torch.int32)
    qsl = torch.arange(0, (seqs + 1) * length, length, dtype=torch.int32)
    queries = torch.randn(seqs * length, QH, D, device="cuda", dtype=torch.bfloat16)
    kv = torch.randn(seqs * pages, PAGE, 2 * KVH, D, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(queries)
    plan = rpa.torch.plan(queries, kv, context_lens, block_tables, qsl, seqs, out=out)
    rpa_ms = ms_per_call(lambda: plan.run(queries, kv, out=out))
    # The same rows, dense: token t of sequence s is page block_tables[s, t // PAGE], slot t % PAGE.
    rows = kv[block_tables.cuda().long()].reshape(seqs, pages * PAGE, 2 * KVH, D)[:, :length]
    k = rows[:, :, 0::2].transpose(1, 2).contiguous()  # kv heads interleaved: K of head h at 2h, V at 2h + 1
    v = rows[:, :, 1::2].transpose(1, 2).contiguous()
    q = queries.reshape(seqs, length, QH, D).transpose(1, 2).contiguous()
    dense = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # noqa: E731
    sdpa_ms = ms_per_call(dense)
    # The two agree (bf16 outputs): a wrong layout above would make the comparison meaningless.
    error = (dense().transpose(1, 2).reshape_as(out).float() - out.float()).abs().max().item()
    flops = 4.0 * D * QH * seqs * length * (length + 1) / 2
    return rpa_ms, sdpa_ms, flops, error


print("seqs  tokens  rpa (ms)  TFLOP/s  sdpa (ms)  TFLOP/s  rpa/sdpa  max |diff|")
for seqs in (1, 4, 16):
    for length in (512, 1024, 2048, 4096, 8192):
        rpa_ms, sdpa_ms, flops, error = case(seqs, length)
        print("%4d  %6d  %8.3f  %7.1f  %9.3f  %7.1f  %8.2f  %10.2e" %
              (seqs, length, rpa_ms, flops / rpa_ms / 1e9, sdpa_ms, flops / sdpa_ms / 1e9, rpa_ms / sdpa_ms, error),
              flush=True)
        torch.cuda.empty_cache()
