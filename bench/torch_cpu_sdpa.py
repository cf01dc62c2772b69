"""PyTorch's CPU attention on W2's shape as dense tensors: the peer `rpa bench`'s W2 figure is set against.

W2 (bench/workloads.cpp) is 4 sequences of 1024 new tokens with no cache before them, QH 32, KVH 8, D 128,
bf16: here torch.nn.functional.scaled_dot_product_attention on [4, 32, 1024, 128] queries and
[4, 8, 1024, 128] keys and values (enable_gqa), causal, on the CPU with the given threads; the median of
the runs after a warm-up, in ms. Usage: python3 bench/torch_cpu_sdpa.py [THREADS] [RUNS]
"""
import statistics
import sys
import time

import torch

threads = int(sys.argv[1]) if len(sys.argv) > 1 else torch.get_num_threads()
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 20
torch.set_num_threads(threads)
generator = torch.Generator().manual_seed(0)
q = torch.randn(4, 32, 1024, 128, generator=generator).to(torch.bfloat16)
k = torch.randn(4, 8, 1024, 128, generator=generator).to(torch.bfloat16)
v = torch.randn(4, 8, 1024, 128, generator=generator).to(torch.bfloat16)
times = []
for i in range(runs + 3):
    start = time.perf_counter()
    torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    if i >= 3:
        times.append((time.perf_counter() - start) * 1e3)
print("torch %s, %d threads: W2 dense bf16 SDPA median %.3f ms (min %.3f) over %d runs"
      % (torch.__version__, threads, statistics.median(times), min(times), runs))
