"""rpa from PyTorch: vLLM's cache ([2, P, page, KVH, D]) on the GPU if there is one: eager, compiled, captured."""
import torch

import rpa.torch

device = "cuda" if torch.cuda.is_available() else "cpu"
P, page, KVH, QH, D = 64, 16, 8, 32, 128
kv_cache = torch.randn(2, P, page, KVH, D, dtype=torch.bfloat16, device=device)
queries = torch.randn(4, QH, D, dtype=torch.bfloat16, device=device)    # 4 decoding sequences
context_lens = torch.tensor([100, 17, 250, 64], dtype=torch.int32)     # metadata on the host
block_tables = torch.randperm(P, dtype=torch.int32)[:64].reshape(4, 16)
query_start_loc = torch.arange(5, dtype=torch.int32)

out = rpa.torch.ragged_paged_attention(queries, (kv_cache[0], kv_cache[1]), context_lens, block_tables,
                                       query_start_loc, 4)               # no copy of the cache
compiled = torch.compile(rpa.torch.ragged_paged_attention)
again = compiled(queries, (kv_cache[0], kv_cache[1]), context_lens, block_tables, query_start_loc, 4)
print(out.shape, out.dtype, out.device, "compiled == eager:", torch.equal(out, again))

if device == "cuda":  # int32 metadata on the GPU: read at every replay of a captured graph
    metadata = [m.to(device) for m in (context_lens, block_tables, query_start_loc)]
    kv = (kv_cache[0], kv_cache[1])
    rpa.torch.ragged_paged_attention(queries, kv, *metadata, 4, max_query_len=1)  # warm-up: plans once
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = rpa.torch.ragged_paged_attention(queries, kv, *metadata, 4, max_query_len=1)
    metadata[0].copy_(torch.tensor([7, 250, 20, 64]))                    # the next step, written in place
    graph.replay()
    eager = rpa.torch.ragged_paged_attention(queries, kv, metadata[0].cpu(), block_tables, query_start_loc, 4)
    print("replayed graph vs eager, max difference:", (captured.float() - eager.float()).abs().max().item())
