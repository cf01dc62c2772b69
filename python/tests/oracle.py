"""An fp64 numpy oracle of the contract, written independently of librpa's reference."""

import numpy as np


def attention(queries, kv_pages, context_lens, block_tables, query_start_loc, num_seqs, softmax_scale=None,
              logits_soft_cap=None, sliding_window=None, sinks=None):
    """Returns (out, lse) in float64. sinks: None or [H_s, n]."""
    q = np.asarray(queries, np.float64)
    kv = np.asarray(kv_pages, np.float64)
    T, QH, D = q.shape
    page_size, KVH = kv.shape[1], kv.shape[2] // 2
    group = QH // KVH
    scale = 1 / np.sqrt(D) if softmax_scale is None else softmax_scale
    out = np.zeros((T, QH, D))
    lse = np.full((T, QH), -np.inf)
    for s in range(num_seqs):
        start, stop, length = query_start_loc[s], query_start_loc[s + 1], context_lens[s]
        q_len = stop - start
        tokens = np.arange(length)
        pages = block_tables[s][tokens // page_size]
        keys = kv[pages, tokens % page_size]  # [L, 2*KVH, D]
        for i in range(q_len):
            pos = length - q_len + i
            lo = 0 if sliding_window is None else max(0, pos - sliding_window + 1)
            for h in range(QH):
                k = keys[lo:pos + 1, 2 * (h // group)]
                v = keys[lo:pos + 1, 2 * (h // group) + 1]
                scores = scale * (k @ q[start + i, h])
                if logits_soft_cap is not None:
                    scores = logits_soft_cap * np.tanh(scores / logits_soft_cap)
                extra = np.zeros(0)
                if sinks is not None:
                    row = 0 if sinks.shape[0] == 1 else (h if sinks.shape[0] == QH else h // group)
                    extra = np.asarray(sinks[row], np.float64)
                logits = np.concatenate([scores, extra])
                m = logits.max()
                weights = np.exp(scores - m)
                denominator = weights.sum() + np.exp(extra - m).sum()
                out[start + i, h] = weights @ v / denominator
                lse[start + i, h] = m + np.log(denominator)
    return out, lse


def random_problem(rng, q_lens, context_lens, QH=4, KVH=2, D=32, page_size=8, extra_pages=3, padding_tokens=2,
                   dtype=np.float32):
    """A random batch with shuffled pages; unused pages and slots hold NaN."""
    S = len(q_lens)
    pages_needed = [(c + page_size - 1) // page_size for c in context_lens]
    W = max(pages_needed + [1]) + 1
    P = sum(pages_needed) + extra_pages
    pool = rng.permutation(P)
    block_tables = np.full((S, W), -5, np.int32)
    used = 0
    for s, n in enumerate(pages_needed):
        block_tables[s, :n] = pool[used:used + n]
        used += n
    kv = rng.standard_normal((P, page_size, 2 * KVH, D)).astype(dtype)
    visible = np.zeros((P, page_size), bool)
    for s, c in enumerate(context_lens):
        t = np.arange(c)
        visible[block_tables[s, t // page_size], t % page_size] = True
    kv[~visible] = np.nan
    qsl = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    T = int(qsl[-1]) + padding_tokens
    queries = rng.standard_normal((T, QH, D)).astype(dtype)
    return queries, kv, np.array(context_lens, np.int32), block_tables, qsl
