"""rpa for PyTorch: ``torch.ops.rpa.ragged_paged_attention``, a custom op with a fake kernel, so it works
in eager mode, under ``torch.compile`` and inside a captured CUDA graph, on CPU tensors (simd backend) and
CUDA/ROCm tensors (gpu plugin, on the current stream, no copy of queries, KV or outputs); and plans.

    import rpa.torch
    out = rpa.torch.ragged_paged_attention(q, kv_pages, context_lens, block_tables, query_start_loc, num_seqs)

    # CUDA int32 metadata: read on the device at every run, so a graph follows what the engine writes there
    rpa.torch.ragged_paged_attention(q, kv_pages, context_lens, block_tables, query_start_loc, n)  # warm-up
    with torch.cuda.graph(graph):
        out = rpa.torch.ragged_paged_attention(q, kv_pages, context_lens, block_tables, query_start_loc, n)
    context_lens.copy_(next_lens); ...; graph.replay()
"""

import operator
import os
import weakref
from typing import Optional, Tuple

import torch

import rpa

__all__ = ["ragged_paged_attention", "plan", "check_metadata"]

_contexts = {}

# Set (or RPA_TORCH_CHECK_METADATA=1) to make each eager call on device metadata wait for its work and raise
# the error host validation would give (rpa.torch.check_metadata() after each call).
CHECK_METADATA = os.environ.get("RPA_TORCH_CHECK_METADATA") == "1"


@torch.library.custom_op("rpa::ragged_paged_attention", mutates_args=())
def _attention(queries: torch.Tensor, kv_pages: Optional[torch.Tensor], k_cache: Optional[torch.Tensor],
               v_cache: Optional[torch.Tensor], context_lens: torch.Tensor, block_tables: torch.Tensor,
               query_start_loc: torch.Tensor, num_seqs: int, softmax_scale: Optional[float],
               logits_soft_cap: Optional[float], sliding_window: Optional[int],
               softmax_aux: Optional[torch.Tensor], return_lse: bool, backend: str, max_query_len: int,
               max_context_len: int) -> Tuple[torch.Tensor, torch.Tensor]:
    kv = kv_pages if kv_pages is not None else (k_cache, v_cache)
    metadata = (context_lens, block_tables, query_start_loc)
    tensors = (queries,) + (kv if isinstance(kv, tuple) else (kv,)) + ((softmax_aux,) if softmax_aux is not None else ())
    layouts = tuple((t.dtype, t.shape, t.stride(), t.device) for t in tensors)
    if _on_device(queries, metadata):
        planned = _device_plan_for(queries, kv, metadata, num_seqs, sliding_window, softmax_aux, return_lse,
                                   backend, (max_query_len, max_context_len), layouts)
    else:
        if queries.is_cuda and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("rpa.torch.ragged_paged_attention in a CUDA graph capture needs the metadata "
                               "(context_lens, block_tables, query_start_loc) as int32 tensors on the queries' "
                               "GPU: the graph reads them at every replay; host or int64 metadata would replay "
                               "the values of the capture")
        planned = _plan_for(queries, kv, metadata, num_seqs, sliding_window, softmax_aux, return_lse, backend,
                            layouts)
    result = planned.run(queries, kv, softmax_scale=softmax_scale, logits_soft_cap=logits_soft_cap,
                         softmax_aux=softmax_aux)
    if return_lse:
        return result
    return result, queries.new_empty((0,), dtype=torch.float32)


def _on_device(queries, metadata):
    """Whether the call takes device metadata: CUDA/ROCm queries with int32 metadata on their device."""
    return queries.is_cuda and all(m.is_cuda and m.dtype == torch.int32 and m.device == queries.device
                                   for m in metadata)


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


_plans = {}  # host metadata: (layouts, num_seqs, window, return_lse, backend) -> _CachedPlan of the latest metadata
_device_plans = {}  # device metadata: everything the plan depends on -> Plan (reading those tensors)
_captured = set()  # device plans run inside a capture: a graph may replay them at any time, so never freed


def _plan_for(queries, kv, metadata, num_seqs, sliding_window, softmax_aux, return_lse, backend, layouts):
    """The op's plan for host metadata: the cached one when the metadata are those it was made from, else
    a new one."""
    key = (layouts, num_seqs, sliding_window, return_lse, backend)
    cached = _plans.get(key)
    if cached is None or not cached.matches(metadata):
        made = plan(queries, kv, *metadata, num_seqs, sliding_window=sliding_window, softmax_aux=softmax_aux,
                    return_lse=return_lse, backend=backend)
        if len(_plans) >= 16:  # layouts of layers long gone
            _plans.clear()
        cached = _plans[key] = _CachedPlan(made, metadata)
    return cached.plan


def _device_plan_for(queries, kv, metadata, num_seqs, sliding_window, softmax_aux, return_lse, backend, bounds,
                     layouts):
    """The op's device-metadata plan: it reads these metadata tensors (their addresses are in the key) at
    every run, so one plan serves every step that rewrites them in place, and runs inside a capture. Making
    a plan allocates device memory, which a capture forbids: the eager call before the capture makes it."""
    key = (layouts, tuple((m.shape, m.stride(), m.data_ptr()) for m in metadata), num_seqs, sliding_window,
           return_lse, backend, bounds)
    capturing = torch.cuda.is_current_stream_capturing()
    made = _device_plans.get(key)
    if made is None:
        if capturing:
            raise RuntimeError("rpa.torch.ragged_paged_attention: no plan for these tensors' shapes and metadata "
                               "addresses yet, and making one allocates device memory, which a CUDA graph "
                               "capture forbids: run the op once with the same tensors before capturing (the "
                               "usual warm-up; torch.compile's cudagraph trees do it, given metadata at static "
                               "addresses)")
        made = plan(queries, kv, *metadata, num_seqs, sliding_window=sliding_window, softmax_aux=softmax_aux,
                    return_lse=return_lse, backend=backend, device_metadata=True, max_query_len=bounds[0],
                    max_context_len=bounds[1])
        # Not kept alive by the plan: the address is in the key, so a later tensor at that address (the
        # caching allocator's next step) finds this plan, which reads whatever lives there at each run.
        made._metadata = ()
        if len(_device_plans) >= 64:  # metadata tensors long gone; captured plans stay alive in _captured
            _device_plans.clear()
        _device_plans[key] = made
    if capturing:
        _captured.add(made)
    elif CHECK_METADATA:
        return _Checked(made)
    return made


class _Checked:
    """A device plan whose run waits for its work and raises what its metadata check recorded."""

    def __init__(self, made):
        self._plan = made

    def run(self, *args, **kwargs):
        result = self._plan.run(*args, **kwargs)
        self._plan.check()
        return result


def check_metadata():
    """Raises rpa.InvalidArgumentError, with host validation's message, when a run of the op on device
    metadata since the last check met metadata breaking a rule (that sequence was skipped: its output rows
    were not written). Waits for the runs' work, so call it outside a capture, e.g. once per step."""
    for made in list(_device_plans.values()) + [p for p in _captured if p not in _device_plans.values()]:
        made.check()


@_attention.register_fake
def _(queries, kv_pages, k_cache, v_cache, context_lens, block_tables, query_start_loc, num_seqs,
      softmax_scale, logits_soft_cap, sliding_window, softmax_aux, return_lse, backend, max_query_len,
      max_context_len):
    lse_shape = queries.shape[:2] if return_lse else (0,)
    return torch.empty_like(queries), queries.new_empty(lse_shape, dtype=torch.float32)


def ragged_paged_attention(queries, kv_pages, context_lens, block_tables, query_start_loc, num_seqs, *,
                           softmax_scale=None, logits_soft_cap=None, sliding_window=None, softmax_aux=None,
                           return_lse=False, backend="auto", max_query_len=0, max_context_len=0):
    """rpa.ragged_paged_attention for torch tensors through the custom op (see that function's doc).

    kv_pages: the combined cache [P, page_size, 2*KVH, D] or the pair (k_cache, v_cache) of
    [P, page_size, KVH, D] (vLLM's kv_cache[0], kv_cache[1] are such views). num_seqs: an int (a tensor
    is read on the host, a sync for a CUDA one). The metadata take one of two paths:

    - Device metadata: CUDA queries with context_lens, block_tables and query_start_loc int32 tensors on
      the same GPU. The op's plan reads them on the device at every run (nothing is read back, no sync),
      so a step that rewrites them in place needs no new plan, and the op can be captured in a CUDA graph
      (torch.cuda.graph, or torch.compile(mode="reduce-overhead")) whose replays follow the values written
      there. The plan is kept per shapes, layouts, metadata addresses, num_seqs (fixed: pad a smaller
      batch with empty sequences), window and bounds; max_query_len and max_context_len bound the values
      (0: T and W * page_size; tight bounds keep the GPU's empty work slots few). Making a plan allocates
      device memory, so run the op once with the same tensors before capturing (a capture without that
      raises RuntimeError). Metadata are not validated on the host: a sequence that breaks a rule is
      skipped (its output rows are not written) and recorded; rpa.torch.check_metadata() raises the
      error host validation gives (CHECK_METADATA / RPA_TORCH_CHECK_METADATA=1: after every eager call).
      Plans run inside a capture live as long as the process (a graph may replay them).
    - Host metadata (CPU tensors, or int64 on the GPU): validated on the host; the op keeps the plan of
      the latest metadata and reuses it while CPU metadata hold the same values and GPU metadata are the
      same tensor objects, unchanged by torch since (their version counter); a new plan reads GPU metadata
      back (a synchronising copy of a few KiB). A write torch does not see (a raw kernel, another framework
      through DLPack) must come with new tensors, or use a plan. Such a call cannot be captured (it would
      replay the metadata of the capture): it raises RuntimeError then.

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
    if isinstance(num_seqs, torch.Tensor):
        if num_seqs.numel() != 1 or num_seqs.is_floating_point() or num_seqs.is_complex():
            raise ValueError("num_seqs: expected an integer or a one-element integer tensor")
        if num_seqs.is_cuda and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("num_seqs: a CUDA tensor would be read back, which a capture forbids: pass an int")
        num_seqs = num_seqs.reshape(()).item()
    out, lse = torch.ops.rpa.ragged_paged_attention(
        queries, combined, k_cache, v_cache, context_lens, block_tables, query_start_loc, _integer(num_seqs),
        None if softmax_scale is None else float(softmax_scale),
        None if logits_soft_cap is None else float(logits_soft_cap),
        None if sliding_window is None else int(sliding_window), softmax_aux, return_lse, backend,
        _integer(max_query_len), _integer(max_context_len))
    return (out, lse) if return_lse else out


def _integer(value):
    """An int argument: Python ints as they are (what torch.compile traces), else through __index__ (numpy
    integers; floats are refused)."""
    return value if isinstance(value, int) else operator.index(value)


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
    ordinal = (queries.device.index or 0) if queries.device.type == "cuda" else 0
    key = (backend, ordinal)
    if key not in _contexts:
        _contexts[key] = rpa.Context(backend=backend, device=ordinal)
    return _contexts[key].plan(queries, kv_pages, context_lens, block_tables, query_start_loc, num_seqs,
                               sliding_window=sliding_window, softmax_aux=softmax_aux, return_lse=return_lse,
                               out=out, device_metadata=device_metadata, max_query_len=max_query_len,
                               max_context_len=max_context_len)
