"""rpa for JAX: ejKernel's ``ragged_page_attention_v2`` as an XLA FFI custom call, usable under ``jax.jit``.

    from rpa.jax import ragged_page_attention_v2   # instead of ejKernel's

The custom call runs rpa's simd backend for arrays on the CPU platform and the gpu plugin for arrays on
CUDA devices, reading and writing XLA's buffers in place. It needs the module ``_rpa_jax_ffi`` that the
build makes when it finds jaxlib's FFI headers (``RPA_JAX_FFI`` may name its path).
"""

import ctypes
import os
import threading

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["ragged_page_attention_v2", "ragged_paged_attention"]

_TARGET = "rpa_attention"
_BACKENDS = {"auto": 0, "reference": 1, "simd": 2, "gpu": 3}
_lock = threading.Lock()
_module = None


def _register():
    """Loads the FFI module once and registers its handlers with XLA for the CPU and CUDA platforms."""
    global _module
    with _lock:
        if _module is not None:
            return
        import rpa
        rpa.library_version()  # loads librpa first: the module's own reference to it resolves to that copy
        here = os.path.dirname(os.path.abspath(__file__))
        path = os.environ.get("RPA_JAX_FFI") or os.path.join(here, "_rpa_jax_ffi.so")
        if not os.path.exists(path):
            raise ImportError("rpa.jax: the FFI module %s is missing: rpa was built without jaxlib's FFI "
                              "headers (build it where `import jax` works, or set RPA_JAX_FFI)" % path)
        module = ctypes.CDLL(path)
        jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(module.RpaAttentionCpu), platform="cpu")
        jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(module.RpaAttentionCuda), platform="CUDA")
        _module = module


def _int32(name, value, ndim):
    value = jnp.asarray(value)
    if not jnp.issubdtype(value.dtype, jnp.integer):
        raise ValueError("%s: dtype %s is not an integer type" % (name, value.dtype))
    if value.ndim != ndim:
        raise ValueError("%s: expected %d dimensions, got %d" % (name, ndim, value.ndim))
    return value.astype(jnp.int32)


def _packed_metadata(context_lens, block_tables, query_start_loc, num_seqs):
    """(metadata, num_seqs, S, W): context_lens [S], query_start_loc [S+1] and block_tables [S, W] in one int32
    array, where the sequences from num_seqs on are empty (context 0, no queries): a device-metadata plan
    covers all S, so that is how num_seqs, read on the device, takes effect without a host read."""
    context_lens = _int32("context_lens", context_lens, 1)
    block_tables = _int32("block_tables", block_tables, 2)
    query_start_loc = _int32("query_start_loc", query_start_loc, 1)
    S, W = block_tables.shape
    if context_lens.shape != (S,) or query_start_loc.shape != (S + 1,):
        raise ValueError("context_lens [%d] and query_start_loc [%d] do not fit block_tables [%d, %d]: expected "
                         "[S], [S+1] and [S, W]" % (context_lens.shape[0], query_start_loc.shape[0], S, W))
    num_seqs = _int32("num_seqs", num_seqs, jnp.ndim(num_seqs)).reshape((1,))
    n = jnp.clip(num_seqs[0], 0, S)
    context_lens = jnp.where(jnp.arange(S) < n, context_lens, 0)
    query_start_loc = jnp.where(jnp.arange(S + 1) <= n, query_start_loc, query_start_loc[n])
    return jnp.concatenate([context_lens, query_start_loc, block_tables.reshape(-1)]), num_seqs, S, W


_RPA_DTYPES = {jnp.dtype(jnp.float32): 0, jnp.dtype(jnp.float16): 1, jnp.dtype(jnp.bfloat16): 2}
_plans = {}  # (shapes, dtypes, window, lse, bounds) -> (the DevicePlan table handed to the FFI module, what it holds)


def _device_plans(queries, k, v, combined, sinks, lse_shape, S, W, window, bounds):
    """(address, length) of a table, indexed by CUDA ordinal, of device-metadata plans for these shapes on
    each GPU JAX and rpa share, made once, at trace time (a plan made in the handler could fall inside a
    CUDA graph capture), and kept for the life of the process like the handlers; (0, 0) without a GPU."""
    import rpa
    key = tuple((a.shape, jnp.dtype(a.dtype)) for a in (queries, k, v, sinks)) + (combined, lse_shape, S, W, window,
                                                                                bounds)
    if key in _plans:
        return _plans[key][0]
    try:
        devices = [d for d in jax.devices("gpu") if d.platform == "gpu"]
    except RuntimeError:  # no GPU platform
        devices = []
    if not devices or not rpa.backend_available("gpu"):
        _plans[key] = ((0, 0), None)
        return 0, 0
    entries = (ctypes.c_void_p * (max(d.local_hardware_id for d in devices) + 1))()
    keep = []

    def tensor(array, data=None, dtype=None, shape=None):  # contiguous (strides 0), data NULL at plan time
        shape = array.shape if shape is None else shape
        return rpa._tensors._descriptor(data, _RPA_DTYPES[jnp.dtype(array.dtype)] if dtype is None else dtype,
                                        shape, [0] * len(shape))

    for d in devices:
        context = rpa.Context("gpu", device=d.local_hardware_id)
        buffer = ctypes.c_void_p()  # metadata arrays to plan over: each call's run reads XLA's own instead
        rpa._check(rpa._lib.rpa_device_alloc(context._handle, 4 * (2 * S + 1 + S * W) or 4, ctypes.byref(buffer)))
        address = buffer.value
        args = rpa._Args()
        rpa._lib.rpa_attention_args_init(ctypes.byref(args))
        args.queries, args.out = tensor(queries), tensor(queries)
        if combined:
            args.kv_pages = tensor(k)
        else:
            args.k_cache, args.v_cache = tensor(k), tensor(v)
        if sinks.size:
            args.softmax_aux = tensor(sinks)
        if lse_shape != (0,):
            args.lse = rpa._tensors._descriptor(None, 0, lse_shape, [0, 0])
        i32 = rpa._DTYPE_I32
        args.context_lens = tensor(None, address, i32, (S,))
        args.query_start_loc = tensor(None, address + 4 * S, i32, (S + 1,))
        args.block_tables = tensor(None, address + 4 * (2 * S + 1), i32, (S, W))
        args.num_seqs = S
        args.sliding_window = window
        args.max_query_len, args.max_context_len = bounds
        args.memory = args.metadata_memory = rpa._tensors.MEMORY_DEVICE
        handle = ctypes.c_void_p()
        rpa._check(rpa._lib.rpa_plan_create(context._handle, ctypes.byref(args), ctypes.byref(handle)))
        entries[d.local_hardware_id] = handle.value
        keep.append(context)  # outlives its plans and buffers: all live as long as the process
    table = (ctypes.addressof(entries), len(entries))
    _plans[key] = (table, (entries, keep))
    return table


def ragged_paged_attention(queries, kv_pages, context_lens, block_tables, query_start_loc, num_seqs, *,
                           softmax_scale=None, logits_soft_cap=None, sliding_window=None, softmax_aux=None,
                           return_lse=False, backend="auto", out=None, check_metadata=None, max_query_len=None,
                           max_context_len=None):
    """rpa.ragged_paged_attention for JAX arrays (any argument may be traced; see that function's doc).

    kv_pages is the combined cache or the pair (k_cache, v_cache). num_seqs may be an int or a device
    array of one element: it stays on the device under jit. backend "auto" means simd on the CPU platform
    and gpu on CUDA. Returns a new array of the queries' dtype (and lse [T, QH] float32 with return_lse).

    On the CPU platform the metadata are validated on the host as everywhere in rpa. On CUDA the call only
    enqueues work on XLA's stream (no host read, no sync, so XLA may put it in a command buffer): the
    metadata stay on the device and are not validated on the host; num_seqs outside [0, S] counts as the
    nearer end; a sequence whose metadata break a rule is skipped (its rows are 0, nothing outside the
    arrays is read). check_metadata=True (default: the environment variable RPA_JAX_CHECK_METADATA=1, read
    at trace time) makes each eager call wait for its work and raise the error host validation would give;
    calls inside a captured command buffer are not checked. max_query_len and max_context_len (Python ints,
    static: a new value retraces) bound every sequence's query tokens and context on CUDA (default: T and
    W * page_size, what the shapes allow); tight bounds, such as max_query_len=1 for a decode step, spare
    the GPU the work slots of longer sequences (the bounds of rpa's device metadata: a sequence beyond them
    is skipped and reported as a broken rule). The CPU platform reads the values and ignores them.
    """
    if out is not None:
        raise ValueError("out: JAX arrays are immutable; rpa.jax returns a new array")
    if backend not in _BACKENDS:
        raise ValueError("backend must be one of %s, got %r" % (", ".join(_BACKENDS), backend))
    _register()
    queries = jnp.asarray(queries)
    if queries.ndim != 3:
        raise ValueError("queries: expected 3 dimensions [T, QH, D], got %d" % queries.ndim)
    T, QH, _ = queries.shape
    if isinstance(kv_pages, (tuple, list)):
        if len(kv_pages) != 2:
            raise ValueError("kv_pages: a sequence must be the pair (k_cache, v_cache)")
        k, v, combined = jnp.asarray(kv_pages[0]), jnp.asarray(kv_pages[1]), 0
    else:
        k, v, combined = jnp.asarray(kv_pages), jnp.zeros((0,), queries.dtype), 1
    if softmax_aux is None:
        sinks = jnp.zeros((0, 0), jnp.float32)
    else:
        sinks = jnp.asarray(softmax_aux)
        if sinks.ndim == 1:  # one sink per q head, as in rpa's other bindings
            if sinks.shape[0] != QH:
                raise ValueError("softmax_aux: 1-D sinks are one per q head and need %d entries, got %d"
                                 % (QH, sinks.shape[0]))
            sinks = sinks.reshape(QH, 1)
    if softmax_scale is not None and float(softmax_scale) == 0.0:
        raise ValueError("softmax_scale: 0 is not a usable scale (pass None for 1/sqrt(head_dim))")
    window = 0 if sliding_window is None else int(sliding_window)
    if window < -2**31:
        raise ValueError("sliding_window: %d must be None or > 0" % window)
    window = 0 if window >= 2**31 else window  # wider than any context
    if check_metadata is None:
        check_metadata = os.environ.get("RPA_JAX_CHECK_METADATA") == "1"
    metadata, num_seqs, S, W = _packed_metadata(context_lens, block_tables, query_start_loc, num_seqs)
    lse_shape = (T, QH) if return_lse else (0,)
    bounds = []
    for name, bound in (("max_query_len", max_query_len), ("max_context_len", max_context_len)):
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, (int, np.integer))
                                  or not 0 <= bound < 2**31):
            raise ValueError("%s: expected None or an integer in [0, 2**31), got %r" % (name, bound))
        bounds.append(0 if bound is None else int(bound))
    plans, plan_count = _device_plans(queries, k, v, combined, sinks, lse_shape, S, W, window, tuple(bounds))
    results = [jax.ShapeDtypeStruct(queries.shape, queries.dtype), jax.ShapeDtypeStruct(lse_shape, jnp.float32)]
    call = jax.ffi.ffi_call(_TARGET, results)
    result, lse = call(queries, k, v, metadata, num_seqs, sinks,
                       softmax_scale=np.float64(0.0 if softmax_scale is None else softmax_scale),
                       logits_soft_cap=np.float64(0.0 if logits_soft_cap is None else logits_soft_cap),
                       sliding_window=np.int32(window), combined_kv=np.int32(combined),
                       backend=np.int32(_BACKENDS[backend]), seqs=np.int32(S), table_width=np.int32(W),
                       plans=np.int64(plans), plan_count=np.int32(plan_count),
                       check_metadata=np.int32(bool(check_metadata)))
    return (result, lse) if return_lse else result


def ragged_page_attention_v2(queries, kv_pages, context_lens, block_tables, query_start_loc, num_seqs, *,
                             softmax_scale=None, logits_soft_cap=None, compute_dtype=jnp.bfloat16,
                             optimized=False, sliding_window=None, softmax_aux=None, mask_value=None,
                             num_kv_pages_per_block=None, num_queries_per_block=None, vmem_limit_bytes=None,
                             num_warps=None, num_stages=None):
    """ejKernel's ragged_page_attention_v2, signature and defaults included, computed by rpa.

    queries [T, QH, D]; kv_pages [P, page_size, 2*KVH, D] (K of kv head h at 2h, V at 2h+1);
    context_lens [S], block_tables [S, W], query_start_loc [S+1] int32; num_seqs an int or an int32
    array of one element (read on the device under jit: no retrace when it changes). Returns
    [T, QH, D] in the queries' dtype.

    What differs from the seed (rpa's README, "Where the seed is wrong", has the details):
    - rows after the first num_seqs sequences are 0, never attention values, and no query block can
      overwrite another sequence's rows; block tables are read only where a sequence needs them;
    - a sliding window never yields NaN, and NaN/Inf in unused pages or invisible slots never leaks;
    - softmax_aux 1-D means one sink per q head ([QH]); 2-D [H_s, n] with H_s in {1, KVH, QH};
    - computation is in float32 at least whatever compute_dtype says; masked keys are skipped, not
      given mask_value; compute_dtype, optimized, mask_value and the tuning knobs
      (num_kv_pages_per_block, num_queries_per_block, vmem_limit_bytes, num_warps, num_stages) are
      accepted and ignored, as the seed's XLA path ignores its knobs;
    - bad metadata (a block-table entry out of range, q_len > context_len, ...) raises an error naming
      the argument instead of reading out of bounds.

    On CUDA the custom call only enqueues work on XLA's stream (it may be captured in a command buffer):
    the metadata are read on the device and not validated on the host (see ragged_paged_attention's
    check_metadata); queries, KV and the output are never copied.
    """
    del compute_dtype, optimized, mask_value, num_kv_pages_per_block, num_queries_per_block
    del vmem_limit_bytes, num_warps, num_stages
    return ragged_paged_attention(queries, kv_pages, context_lens, block_tables, query_start_loc, num_seqs,
                                  softmax_scale=softmax_scale, logits_soft_cap=logits_soft_cap,
                                  sliding_window=sliding_window, softmax_aux=softmax_aux)
