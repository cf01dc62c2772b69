"""rpa for PyTorch: ``torch.ops.rpa.ragged_paged_attention``, a custom op with a fake kernel, so it works
in eager mode and under ``torch.compile`` on CPU tensors (simd backend) and CUDA/ROCm tensors (gpu plugin,
on the current stream, no copy of queries, KV or outputs); and plans, whose runs a CUDA graph can capture.

    import rpa.torch
    out = rpa.torch.ragged_paged_attention(q, kv_pages, context_lens, block_tables, query_start_loc, num_seqs)

    plan = rpa.torch.plan(q, kv_pages, context_lens, block_tables, query_start_loc, num_seqs, out=out)
    with torch.cuda.graph(graph):
        plan.run(q, kv_pages, out=out)       # enqueues kernels on the capturing stream, nothing else
"""

import weakref
from typing import Optional, Tuple

import torch

import rpa

__all__ = ["ragged_paged_attention", "plan"]

_contexts = {}


@torch.library.custom_op("rpa::ragged_paged_attention", mutates_args=())
def _attention(queries: torch.Tensor, kv_pages: Optional[torch.Tensor], k_cache: Optional[torch.Tensor],
               v_cache: Optional[torch.Tensor], context_lens: torch.Tensor, block_tables: torch.Tensor,
               query_start_loc: torch.Tensor, num_seqs: torch.Tensor, softmax_scale: Optional[float],
               logits_soft_cap: Optional[float], sliding_window: Optional[int],
               softmax_aux: Optional[torch.Tensor], return_lse: bool, backend: str
               ) -> Tuple[torch.Tensor, torch.Tensor]:
    kv = kv_pages if kv_pages is not None else (k_cache, v_cache)
    planned = _plan_for(queries, kv, (context_lens, block_tables, query_start_loc, num_seqs), sliding_window,
                        softmax_aux, return_lse, backend)
    result = planned.run(queries, kv, softmax_scale=softmax_scale, logits_soft_cap=logits_soft_cap,
                         softmax_aux=softmax_aux)
    if return_lse:
        return result
    return result, queries.new_empty((0,), dtype=torch.float32)


class _CachedPlan:
    """A plan with what it was made from: every layer of a step passes the same metadata, so the op plans
    once per step. CPU metadata tensors must hold the same values (compared: writes through numpy views
    bypass torch's version counter); GPU ones must be the same tensor objects at the same version (comparing
    values would mean a copy back and a sync)."""

    def __init__(self, plan, metadata):
        self.plan = plan
        self._seen = [(weakref.ref(m), m._version, m.clone() if m.device.type == "cpu" else None) for m in metadata]

    def matches(self, metadata):
        for m, (ref, version, values) in zip(metadata, self._seen):
            if values is not None:
                if m.device.type != "cpu" or m.dtype != values.dtype or not torch.equal(m, values):
                    return False
            elif ref() is not m or m._version != version:
                return False
        return True


_plans = {}  # (layouts, window, return_lse, backend) -> _CachedPlan of the latest metadata


def _plan_for(queries, kv, metadata, sliding_window, softmax_aux, return_lse, backend):
    """The op's plan: the cached one when the metadata are those it was made from, else a new one."""
    if queries.is_cuda and torch.cuda.is_current_stream_capturing():
        # A captured call replays with the metadata of its capture, whatever the engine writes later.
        raise RuntimeError("rpa.torch.ragged_paged_attention cannot be captured in a CUDA graph: capture "
                           "plan.run of rpa.torch.plan(..., device_metadata=True) (the plan reads the metadata "
                           "at every replay)")
    tensors = (queries,) + (kv if isinstance(kv, tuple) else (kv,)) + ((softmax_aux,) if softmax_aux is not None else ())
    layouts = tuple((t.dtype, t.shape, t.stride(), t.device) for t in tensors)
    key = (layouts, sliding_window, return_lse, backend)
    cached = _plans.get(key)
    if cached is None or not cached.matches(metadata):
        made = plan(queries, kv, *metadata, sliding_window=sliding_window, softmax_aux=softmax_aux,
                    return_lse=return_lse, backend=backend)
        if len(_plans) >= 16:  # layouts of layers long gone
            _plans.clear()
        cached = _plans[key] = _CachedPlan(made, metadata)
    return cached.plan


@_attention.register_fake
def _(queries, kv_pages, k_cache, v_cache, context_lens, block_tables, query_start_loc, num_seqs,
      softmax_scale, logits_soft_cap, sliding_window, softmax_aux, return_lse, backend):
    lse_shape = queries.shape[:2] if return_lse else (0,)
    return torch.empty_like(queries), queries.new_empty(lse_shape, dtype=torch.float32)


def ragged_paged_attention(queries, kv_pages, context_lens, block_tables, query_start_loc, num_seqs, *,
                           softmax_scale=None, logits_soft_cap=None, sliding_window=None, softmax_aux=None,
                           return_lse=False, backend="auto"):
    """rpa.ragged_paged_attention for torch tensors through the custom op (see that function's doc).

    kv_pages: the combined cache [P, page_size, 2*KVH, D] or the pair (k_cache, v_cache) of
    [P, page_size, KVH, D] (vLLM's kv_cache[0], kv_cache[1] are such views). Metadata may be int32/int64
    tensors on the CPU or the GPU. The op plans once for the calls of a step: it keeps the plan of the
    latest metadata and reuses it while CPU metadata hold the same values and GPU metadata are the same
    tensor objects, unchanged by torch since (their version counter); a new plan reads GPU metadata back
    (a synchronising copy of a few KiB). A write torch does not see (a raw kernel, another framework through
    DLPack) must come with new tensors, or use a plan. For a CUDA graph, plan the batch outside the
    capture and run the plan inside it; the op refuses to be captured.

    >>> import torch, rpa.torch
    >>> q = torch.ones(1, 2, 4)
    >>> kv = torch.zeros(1, 16, 2, 4); kv[0, :3, 1] = torch.tensor([1., 2., 3.])[:, None]
    >>> rpa.torch.ragged_paged_attention(q, kv, torch.tensor([3]), torch.tensor([[0]]),
    ...                                  torch.tensor([0, 1]), 1)[0, 0].tolist()
    [2.0, 2.0, 2.0, 2.0]
    """
    if isinstance(kv_pages, (tuple, list)):
        if len(kv_pages) != 2:
            raise ValueError("kv_pages: a sequence must be the pair (k_cache, v_cache)")
        combined, k_cache, v_cache = None, kv_pages[0], kv_pages[1]
    else:
        combined, k_cache, v_cache = kv_pages, None, None
    if not isinstance(num_seqs, torch.Tensor):
        num_seqs = torch.tensor([int(num_seqs)], dtype=torch.int32)
    out, lse = torch.ops.rpa.ragged_paged_attention(
        queries, combined, k_cache, v_cache, context_lens, block_tables, query_start_loc, num_seqs,
        None if softmax_scale is None else float(softmax_scale),
        None if logits_soft_cap is None else float(logits_soft_cap),
        None if sliding_window is None else int(sliding_window), softmax_aux, return_lse, backend)
    return (out, lse) if return_lse else out


def plan(queries, kv_pages, context_lens, block_tables, query_start_loc, num_seqs, *, sliding_window=None,
         softmax_aux=None, return_lse=False, out=None, backend="auto", device_metadata=False, max_query_len=0,
         max_context_len=0):
    """An rpa.Plan for these torch tensors' metadata and layouts, on a context of the queries' device.

    Make it outside a CUDA graph capture (it reads the metadata and, on the GPU, uploads them once);
    ``plan.run(queries, kv_pages, out=out)`` then reads only the tensors and enqueues the kernels on the
    current stream without allocating, copying or synchronising, so a graph can capture it (pass out= and
    keep the tensors static, as for any captured work). One plan serves every layer of a step.
    With device_metadata=True (CUDA int32 metadata tensors) the plan reads the metadata on the device at
    every run instead: rewrite it in place between replays; see rpa.Context.plan and Plan.check().
    """
    ordinal = queries.device.index or 0 if queries.device.type == "cuda" else 0
    key = (backend, ordinal)
    if key not in _contexts:
        _contexts[key] = rpa.Context(backend=backend, device=ordinal)
    return _contexts[key].plan(queries, kv_pages, context_lens, block_tables, query_start_loc, num_seqs,
                               sliding_window=sliding_window, softmax_aux=softmax_aux, return_lse=return_lse,
                               out=out, device_metadata=device_metadata, max_query_len=max_query_len,
                               max_context_len=max_context_len)
