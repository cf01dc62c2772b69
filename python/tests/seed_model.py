"""A numpy model of the seed's XLA kernel (README, "Where the seed is wrong"): queries cut into blocks of
8 rows and KV into blocks of 64 pages, both read and written through clamped dynamic slices, with an
online softmax started at -inf and every slot of a block multiplied by its (possibly 0) weight. Its bugs
come from that blocking alone; the attention it computes is otherwise the contract's."""

import numpy as np


def clamped(start, size, extent):
    """Where a dynamic slice of `size` starting at `start` really starts in an axis of `extent`."""
    return max(0, min(start, extent - size))


def seed_attention(case, q_block=8, kv_block=64):
    q = np.asarray(case.queries, np.float64)
    kv = np.asarray(case.kv_pages, np.float64)
    T, QH, D = q.shape
    page_size, KVH = kv.shape[1], kv.shape[2] // 2
    group = QH // KVH
    tables, W = case.block_tables, case.block_tables.shape[1]
    scale = 1 / np.sqrt(D) if case.softmax_scale is None else case.softmax_scale
    padded_T = -(-T // q_block) * q_block
    q_padded = np.zeros((padded_T, QH, D))
    q_padded[:T] = q
    out = np.zeros((padded_T, QH, D))
    kv_pages_per_block = min(kv_block, W)
    span = kv_pages_per_block * page_size
    with np.errstate(invalid="ignore"):
        for s in range(case.num_seqs):
            start, stop, length = case.query_start_loc[s], case.query_start_loc[s + 1], case.context_lens[s]
            q_len = stop - start
            for b in range(-(-q_len // q_block)):
                row0 = clamped(start + b * q_block, q_block, padded_T)  # bug 1: the block slides back
                positions = length - q_len + b * q_block + np.arange(q_block)  # ... but keeps its positions
                block_q = q_padded[row0:row0 + q_block]
                m = np.full((q_block, QH), -np.inf)
                l = np.zeros((q_block, QH))
                acc = np.zeros((q_block, QH, D))
                for j in range(-(-length // span)):
                    entry0 = clamped(j * kv_pages_per_block, kv_pages_per_block, W)  # bug 2
                    pages = tables[s, entry0:entry0 + kv_pages_per_block]
                    keys = j * span + np.arange(span)  # logical positions, unshifted
                    block = kv[pages].reshape(span, 2 * KVH, D)  # bug 5: every slot, NaN included
                    k = block[:, 0::2][:, np.arange(QH) // group]  # [span, QH, D]
                    v = block[:, 1::2][:, np.arange(QH) // group]
                    scores = scale * np.einsum("qhd,khd->qhk", block_q, k)
                    mask = (keys[None, :] <= positions[:, None]) & (keys[None, :] < length)
                    if case.sliding_window is not None:
                        mask &= keys[None, :] > positions[:, None] - case.sliding_window
                    mask = mask[:, None, :]
                    scores = np.where(mask, scores, -np.inf)
                    m_new = np.maximum(m, scores.max(axis=2))
                    p = np.where(mask, np.exp(scores - m_new[..., None]), 0.0)
                    alpha = np.exp(m - m_new)  # bug 3: -inf - -inf = NaN for a block with nothing visible
                    l = alpha * l + p.sum(axis=2)
                    acc = alpha[..., None] * acc + np.einsum("qhk,khd->qhd", p, v)
                    m = m_new
                # bug 4: the whole block is written back, rows past the sequence (padding) included
                out[row0:row0 + q_block] = acc / np.maximum(l, 1e-6)[..., None]
    return out[:T].astype(np.float32)
