"""rpa from numpy: a mixed batch (a 5-token prefill chunk and a decode) over a paged cache, with the log-sum-exp."""
import numpy as np

import rpa

rng = np.random.default_rng(0)
P, page, KVH, QH, D = 8, 16, 2, 8, 64
kv_pages = rng.standard_normal((P, page, 2 * KVH, D), dtype=np.float32)  # K of head h at 2h, V at 2h+1
context_lens = np.array([37, 20], np.int32)        # tokens in the cache, the new ones included
block_tables = np.array([[4, 0, 6], [2, 5, 0]], np.int32)
query_start_loc = np.array([0, 5, 6], np.int32)    # 5 new tokens for sequence 0, 1 for sequence 1
queries = rng.standard_normal((6, QH, D), dtype=np.float32)

out, lse = rpa.ragged_paged_attention(queries, kv_pages, context_lens, block_tables, query_start_loc, 2,
                                      sliding_window=32, return_lse=True)
print("out", out.shape, out.dtype, "lse[5] =", lse[5].round(3))

# The same through bfloat16 (ml_dtypes arrays work alike), with K and V as separate strided views.
k_cache, v_cache = kv_pages[:, :, 0::2], kv_pages[:, :, 1::2]
out16 = rpa.ragged_paged_attention(rpa.bfloat16(queries), (rpa.bfloat16(k_cache), rpa.bfloat16(v_cache)),
                                   context_lens, block_tables, query_start_loc, 2, sliding_window=32)
error = np.abs(out16.to_float32() - out).max()
print("bf16 inputs: largest difference from float32 %.4f" % error)
assert error < 0.05
