"""Python binding of rpa, ragged paged attention over a paged KV cache (ctypes over librpa, numpy arrays).

    out = rpa.ragged_paged_attention(queries, kv_pages, context_lens, block_tables, query_start_loc, num_seqs)

    ctx = rpa.Context(backend="simd")                  # or "auto", "reference", "gpu"
    plan = ctx.plan(queries, kv_pages, context_lens, block_tables, query_start_loc, num_seqs)
    out = plan.run(queries, kv_pages)                  # once per layer, same metadata and layouts

The library is found through the environment variable RPA_LIBRARY (path to librpa.so), else next to this
package, else in the install prefix or the linker's search path. bfloat16 has no numpy dtype: pass
``rpa.bfloat16(array)`` (or an ml_dtypes bfloat16 array) and read results with ``.to_float32()``.
"""

import ctypes
import ctypes.util
import os
import struct
import sys
import threading

import numpy as np

from . import _tensors

__all__ = ["ragged_paged_attention", "Context", "Plan", "bfloat16", "BFloat16Array", "RpaError",
           "InvalidArgumentError", "UnsupportedError", "UnavailableError", "OutOfMemoryError", "DeviceError",
           "InternalError", "merge_state", "library_version", "backend_available", "plugin_reports", "write_kv"]

# Mirrors of include/rpa/rpa.h (checked against the library's own struct_size at load time).
_DTYPE_F32, _DTYPE_I32 = 0, 6
_KV_DTYPES = {"fp8_e4m3": 3, "fp8_e5m2": 4, "int8": 5}
# Array dtypes whose kind names the quantised format (ml_dtypes' float8 types, numpy int8).
_INFERRED_KV_DTYPES = {"float8_e4m3fn": "fp8_e4m3", "float8_e5m2": "fp8_e5m2", "int8": "int8"}
_COPY_DEVICE_TO_HOST = 1
_BACKENDS = {"auto": 0, "reference": 1, "simd": 2, "gpu": 3}
_STATUS_OK = 0
_POINTER = struct.Struct("P")


_Tensor = _tensors.Tensor


class _Args(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("queries", _Tensor), ("kv_pages", _Tensor),
                ("k_cache", _Tensor), ("v_cache", _Tensor), ("context_lens", _Tensor),
                ("block_tables", _Tensor), ("query_start_loc", _Tensor), ("num_seqs", ctypes.c_int32),
                ("softmax_scale", ctypes.c_double), ("logits_soft_cap", ctypes.c_double),
                ("sliding_window", ctypes.c_int32), ("softmax_aux", _Tensor), ("out", _Tensor),
                ("lse", _Tensor), ("memory", ctypes.c_int), ("stream", ctypes.c_void_p),
                ("synchronize", ctypes.c_int32), ("k_scale", _Tensor), ("v_scale", _Tensor),
                ("metadata_memory", ctypes.c_int), ("max_query_len", ctypes.c_int32), ("max_context_len", ctypes.c_int32)]


class _WriteArgs(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("keys", _Tensor), ("values", _Tensor),
                ("slot_mapping", _Tensor), ("kv_pages", _Tensor), ("k_cache", _Tensor), ("v_cache", _Tensor),
                ("k_scale", _Tensor), ("v_scale", _Tensor), ("memory", ctypes.c_int), ("stream", ctypes.c_void_p),
                ("synchronize", ctypes.c_int32)]


class _MergeArgs(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("out_a", _Tensor), ("lse_a", _Tensor), ("out_b", _Tensor),
                ("lse_b", _Tensor), ("out", _Tensor), ("lse", _Tensor), ("memory", ctypes.c_int),
                ("stream", ctypes.c_void_p), ("synchronize", ctypes.c_int32)]


class _Options(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("backend", ctypes.c_int), ("num_threads", ctypes.c_int32),
                ("device_ordinal", ctypes.c_int32)]


class _PluginReport(ctypes.Structure):
    _fields_ = [("path", ctypes.c_char_p), ("name", ctypes.c_char_p), ("usable", ctypes.c_int32),
                ("device_count", ctypes.c_int32), ("reason", ctypes.c_char_p)]


class RpaError(Exception):
    """A call librpa rejected or could not run; ``status`` is the library's status name. Each status has
    its own subclass: InvalidArgumentError is a ValueError, the others are RuntimeErrors."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class InvalidArgumentError(RpaError, ValueError):
    """RPA_STATUS_INVALID_ARGUMENT: an argument breaks the contract; the message names it."""


class UnsupportedError(RpaError, RuntimeError):
    """RPA_STATUS_UNSUPPORTED: valid, but the backend cannot run it."""


class UnavailableError(RpaError, RuntimeError):
    """RPA_STATUS_UNAVAILABLE: the backend cannot run on this machine."""


class OutOfMemoryError(RpaError, RuntimeError):
    """RPA_STATUS_OUT_OF_MEMORY: a host or device allocation failed."""


class DeviceError(RpaError, RuntimeError):
    """RPA_STATUS_DEVICE_ERROR: the GPU runtime reported an error."""


class InternalError(RpaError, RuntimeError):
    """RPA_STATUS_INTERNAL: a bug in rpa."""


_ERRORS = {1: InvalidArgumentError, 2: UnsupportedError, 3: UnavailableError, 4: OutOfMemoryError,
           5: DeviceError, 6: InternalError}


class BFloat16Array:
    """bfloat16 data held as the upper 16 bits of float32 in a uint16 array of the same shape."""

    def __init__(self, bits):
        bits = np.asarray(bits)
        if bits.dtype != np.uint16:
            raise ValueError("BFloat16Array holds uint16 bit patterns; use rpa.bfloat16() to convert floats")
        self.bits = bits

    @property
    def shape(self):
        return self.bits.shape

    def to_float32(self):
        return (self.bits.astype(np.uint32) << 16).view(np.float32)


def bfloat16(values):
    """Rounds float values to bfloat16 (nearest even, NaN kept) and returns a BFloat16Array."""
    f = np.ascontiguousarray(values, dtype=np.float32)
    u = f.view(np.uint32)
    rounded = ((u + np.uint32(0x7FFF) + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(f)
    rounded[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return BFloat16Array(rounded)


def _find_library():
    candidates = []
    if os.environ.get("RPA_LIBRARY"):
        candidates.append(os.environ["RPA_LIBRARY"])
    here = os.path.dirname(os.path.abspath(__file__))
    try:  # written by an install: where librpa is, seen from this directory
        from ._install import LIBRARY_DIR
        candidates += [os.path.join(here, LIBRARY_DIR, name) for name in ("librpa.so.0", "librpa.so")]
    except ImportError:
        pass
    candidates.append(os.path.join(here, "librpa.so"))
    for prefix in {sys.prefix, "/usr/local", "/usr"}:
        for libdir in ("lib", "lib64", "lib/x86_64-linux-gnu"):
            candidates.append(os.path.join(prefix, libdir, "librpa.so"))
    found = ctypes.util.find_library("rpa")
    if found:
        candidates.append(found)
    for path in candidates:
        if os.path.exists(path) or path == found:
            return ctypes.CDLL(os.path.normpath(path))
    raise OSError("librpa not found: set RPA_LIBRARY to the path of librpa.so (tried %s)" % ", ".join(candidates))


_lib = None
_lib_lock = threading.Lock()  # loading the library
_contexts_lock = threading.Lock()  # the module-level function's contexts (taken after _lib_lock, never inside it)
_contexts = {}


def _library():
    global _lib
    with _lib_lock:
        if _lib is None:
            lib = _find_library()
            lib.rpa_last_error.restype = ctypes.c_char_p
            lib.rpa_status_string.restype = ctypes.c_char_p
            lib.rpa_status_string.argtypes = [ctypes.c_int]
            lib.rpa_attention.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Args)]
            lib.rpa_plan_create.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Args), ctypes.POINTER(ctypes.c_void_p)]
            lib.rpa_plan_run.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Args)]
            lib.rpa_plan_destroy.argtypes = [ctypes.c_void_p]
            lib.rpa_plan_get_error.argtypes = [ctypes.c_void_p]
            lib.rpa_context_destroy.argtypes = [ctypes.c_void_p]
            lib.rpa_merge_args_init.argtypes = [ctypes.POINTER(_MergeArgs)]
            lib.rpa_merge_states.argtypes = [ctypes.c_void_p, ctypes.POINTER(_MergeArgs)]
            lib.rpa_context_get_backend.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
            lib.rpa_context_create.argtypes = [ctypes.POINTER(_Options), ctypes.POINTER(ctypes.c_void_p)]
            lib.rpa_attention_args_init.argtypes = [ctypes.POINTER(_Args)]
            lib.rpa_context_options_init.argtypes = [ctypes.POINTER(_Options)]
            lib.rpa_get_plugin_report.argtypes = [ctypes.c_int32, ctypes.POINTER(_PluginReport)]
            lib.rpa_write_kv.argtypes = [ctypes.c_void_p, ctypes.POINTER(_WriteArgs)]
            lib.rpa_write_kv_args_init.argtypes = [ctypes.POINTER(_WriteArgs)]
            lib.rpa_device_alloc.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p)]
            for struct, init, c_name in ((_Args, lib.rpa_attention_args_init, "rpa_attention_args"),
                                         (_WriteArgs, lib.rpa_write_kv_args_init, "rpa_write_kv_args")):
                probe = struct()
                init(ctypes.byref(probe))
                if probe.struct_size != ctypes.sizeof(struct):
                    raise OSError("librpa's %s has %d bytes, this binding expects %d"
                                  % (c_name, probe.struct_size, ctypes.sizeof(struct)))
            _lib = lib
        return _lib


def _check(status):
    # Called after _library() succeeded; takes no lock, so it may run under any.
    if status != _STATUS_OK:
        message = _lib.rpa_last_error().decode()
        raise _ERRORS.get(status, RpaError)(_lib.rpa_status_string(status).decode(), message)


def _check_backend(backend):
    if backend not in _BACKENDS:
        raise ValueError("backend must be one of %s, got %r" % (", ".join(_BACKENDS), backend))


def _context(backend, device=None):
    """The process-wide context of `backend` that the module-level function uses, one per GPU ordinal
    (device: a tensor's (DLPack device type, ordinal), None for host memory)."""
    _check_backend(backend)
    _library()
    ordinal = device[1] if device else 0
    with _contexts_lock:
        if (backend, ordinal) not in _contexts:
            # lives as long as the process, like the library
            _contexts[backend, ordinal] = Context(backend, device=ordinal)
        return _contexts[backend, ordinal]


def library_version():
    """librpa's version as (major, minor, patch)."""
    v = _library().rpa_get_version()
    return v // 10000, v // 100 % 100, v % 100


def backend_available(backend):
    """Whether librpa can run `backend` ("reference", "simd", "gpu") here."""
    return bool(_library().rpa_backend_available(_BACKENDS[backend]))


def plugin_reports():
    """The GPU plugins librpa tried to load: dicts with path, name, usable, device_count, reason."""
    lib = _library()
    reports = []
    for i in range(lib.rpa_plugin_report_count()):
        r = _PluginReport()
        _check(lib.rpa_get_plugin_report(i, ctypes.byref(r)))
        reports.append({"path": r.path.decode(), "name": r.name.decode(), "usable": bool(r.usable),
                        "device_count": r.device_count, "reason": r.reason.decode()})
    return reports


def _real(name, value):
    """A Python float for a scalar argument: a real number (not bool or str) that a double holds exactly."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError("%s: expected a real number, got %r" % (name, value))
    try:
        result = float(value)
    except OverflowError:
        raise ValueError("%s: %r does not fit in a double" % (name, value)) from None
    if isinstance(value, (int, np.integer)) and result != value:
        raise ValueError("%s: %r is not exactly a double" % (name, value))
    return result


def _quantised_kv(name, array, kv_dtype):
    """(codes, rpa dtype) of a quantised cache, or None for a float cache: kv_dtype, else inferred from an
    int8 / ml_dtypes float8 array or a torch float8 / int8 tensor. The codes are a uint8 numpy array for
    host memory, else the GPU tensor itself (borrowed through DLPack; torch's as uint8)."""
    if type(array).__module__.split(".")[0] == "torch":  # its bytes, shared
        import torch
        kv_dtype = kv_dtype or _INFERRED_KV_DTYPES.get(str(array.dtype).replace("torch.", ""))
        if kv_dtype is None:
            return None
        if array.dtype.itemsize == 1:
            array = array.view(torch.uint8)  # DLPack may not carry float8
        if not _tensors.is_gpu(array):
            array = array.numpy()
    if _tensors.is_gpu(array):
        if kv_dtype is None:
            return None
        if kv_dtype not in _KV_DTYPES:
            raise ValueError("kv_dtype must be one of %s, got %r" % (", ".join(_KV_DTYPES), kv_dtype))
        return array, _KV_DTYPES[kv_dtype]
    if kv_dtype is None and isinstance(array, np.ndarray):
        kv_dtype = _INFERRED_KV_DTYPES.get(array.dtype.name)
    if kv_dtype is None:
        return None
    if kv_dtype not in _KV_DTYPES:
        raise ValueError("kv_dtype must be one of %s, got %r" % (", ".join(_KV_DTYPES), kv_dtype))
    array = np.asarray(array)
    if array.dtype.itemsize != 1 or array.dtype.kind not in "iuV" and not array.dtype.name.startswith("float8"):
        raise ValueError("%s: kv_dtype %s takes uint8 codes, int8 values or float8 arrays, not %s"
                         % (name, kv_dtype, array.dtype))
    array = array.view(np.uint8)
    if not _tensors._usable(array):
        array = np.ascontiguousarray(array)
    return array, _KV_DTYPES[kv_dtype]


def _scale_input(name, scale):
    """A [1] or [KVH] float32 array for a KV scale (a Python float, a sequence or an array)."""
    array = np.ascontiguousarray(np.asarray(scale, dtype=np.float32).reshape(-1))
    if array.size == 0:
        raise ValueError("%s: expected a float or a [KVH] array, got an empty array" % name)
    return array


def _bind_cache(args, keep, kv_pages, kv_dtype, k_scale, v_scale, bind_float):
    """Sets the cache and scale fields shared by rpa_attention_args and rpa_write_kv_args; returns the
    host arrays of a quantised cache (else []). bind_float(name, value, codes=None) binds a float tensor,
    or with codes (an rpa dtype) a GPU tensor of 8-bit codes."""
    pair = isinstance(kv_pages, (tuple, list))
    if pair and len(kv_pages) != 2:
        raise ValueError("kv_pages: a sequence must be the pair (k_cache, v_cache)")
    names = ("k_cache", "v_cache") if pair else ("kv_pages",)
    values = tuple(kv_pages) if pair else (kv_pages,)
    codes = []
    for name, value in zip(names, values):
        quantised = _quantised_kv(name, value, kv_dtype)
        if quantised is None:
            setattr(args, name, bind_float(name, value))
        elif not isinstance(quantised[0], np.ndarray):
            setattr(args, name, bind_float(name, *quantised))
        else:
            keep.append(quantised[0])
            codes.append(quantised[0])
            setattr(args, name, _tensors.descriptor(*quantised))
    for name, scale in (("k_scale", k_scale), ("v_scale", v_scale)):
        if scale is not None:
            array = _scale_input(name, scale)
            keep.append(array)
            setattr(args, name, _tensors.descriptor(array, _DTYPE_F32))
    return codes


def _binder(keep, dl_stream):
    """(bind, bound) for the tensors of one call: bind(name, value, codes=None, writable=False) borrows a
    float tensor (or with codes, an rpa dtype, a tensor of 8-bit codes) without a copy, keeps it alive in
    `keep`, appends it to `bound` and returns its descriptor; every tensor must live where the first does."""
    bound, names = [], []

    def bind(name, value, codes=None, writable=False):
        b = (_tensors.borrow_float(name, value, dl_stream, writable) if codes is None
             else _tensors.borrow_codes(name, value, codes, dl_stream))
        if bound and (b.memory, b.device) != (bound[0].memory, bound[0].device):
            raise ValueError("%s: lives on %s, %s on %s: every tensor argument must share one device"
                             % (name, b.device or "the host", names[0], bound[0].device or "the host"))
        names.append(name)
        bound.append(b)
        keep.append(b)
        return b.tensor

    return bind, bound


def _bind_tensors(args, keep, queries, kv_pages, softmax_aux, out, return_lse, kv_dtype=None, k_scale=None,
                  v_scale=None):
    """Fills the float tensors of args, borrowed without copies (rpa._tensors): memory and stream follow
    the queries (a GPU tensor runs as device memory on its framework's current stream). Returns
    (result, lse, device) with device None for host memory, else (DLPack device type, ordinal)."""
    gpu = _tensors.is_gpu(queries)
    dl_stream, stream = _tensors.current_stream(queries) if gpu else (None, 0)
    bind, bound = _binder(keep, dl_stream)
    args.queries = bind("queries", queries)
    q_shape = bound[0].shape
    if len(q_shape) != 3:
        raise ValueError("queries: expected 3 dimensions [T, QH, D], got %d" % len(q_shape))
    args.memory = bound[0].memory
    args.stream = stream
    _bind_cache(args, keep, kv_pages, kv_dtype, k_scale, v_scale, bind)
    if softmax_aux is not None:
        sinks = bind("softmax_aux", softmax_aux)
        if sinks.ndim == 1:  # one sink per q head: the view [QH, 1]
            if sinks.shape[0] != q_shape[1]:
                raise ValueError("softmax_aux: 1-D sinks are one per q head and need %d entries, got %d"
                                 % (q_shape[1], sinks.shape[0]))
            sinks.ndim, sinks.shape[1], sinks.strides[1] = 2, 1, 1
        args.softmax_aux = sinks
    result = _tensors.empty(queries, q_shape) if out is None else out
    if result is None:
        raise ValueError("out: rpa cannot allocate an output for a %s tensor on a GPU; pass out="
                         % type(queries).__name__)
    args.out = bind("out", result, writable=True)
    lse = None
    if return_lse:
        lse = _tensors.empty(result, q_shape[:2], float32=True)
        args.lse = bind("lse", lse, writable=True)
    return result, lse, bound[0].device


def _bind_metadata(args, keep, context_lens, block_tables, query_start_loc, num_seqs, sliding_window):
    """Fills the metadata (any integer arrays or tensors, read on the host as the C ABI wants them)."""
    for name, value in (("context_lens", context_lens), ("block_tables", block_tables),
                        ("query_start_loc", query_start_loc)):
        array = _tensors.borrow_int32(name, value, _device_to_host)
        keep.append(array)
        setattr(args, name, _tensors.descriptor(array, _DTYPE_I32))
    num_seqs_array = _tensors.borrow_int32("num_seqs", num_seqs, _device_to_host)
    if num_seqs_array.size != 1:
        raise ValueError("num_seqs: expected an integer or a one-element integer array")
    args.num_seqs = int(num_seqs_array.reshape(()))
    if sliding_window is not None:
        if isinstance(sliding_window, (bool, np.bool_)) or not isinstance(sliding_window, (int, np.integer)):
            raise ValueError("sliding_window: expected an integer or None, got %r" % (sliding_window,))
        window = int(sliding_window)
        if window < -2**31:
            raise ValueError("sliding_window: %d must be None or > 0" % window)
        args.sliding_window = 0 if window >= 2**31 else window  # wider than any context: the same as none


def _device_to_host(dst, src, nbytes, device):
    """Reads GPU metadata back (rpa_device_copy waits for the copy)."""
    _check(_library().rpa_device_copy(_context("gpu", device)._handle, ctypes.c_void_p(dst), ctypes.c_void_p(src),
                                      ctypes.c_size_t(nbytes), _COPY_DEVICE_TO_HOST))


def _bind_scalars(args, softmax_scale, logits_soft_cap):
    if softmax_scale is not None:
        args.softmax_scale = _real("softmax_scale", softmax_scale)
        if args.softmax_scale == 0.0:
            raise ValueError("softmax_scale: 0 is not a usable scale (pass None for 1/sqrt(head_dim))")
    # 0 means "none", as in the C ABI; the library rejects negative or non-finite values.
    if logits_soft_cap is not None:
        args.logits_soft_cap = _real("logits_soft_cap", logits_soft_cap)


class Context:
    """An rpa context: a backend with its threads or device. Contexts are independent; one may be used
    from several threads at once.

        ctx = rpa.Context(backend="auto", num_threads=0, device=0)
    """

    def __init__(self, backend="auto", num_threads=0, device=0):
        _check_backend(backend)
        lib = _library()
        options = _Options()
        lib.rpa_context_options_init(ctypes.byref(options))
        options.backend = _BACKENDS[backend]
        options.num_threads = int(num_threads)
        options.device_ordinal = int(device)
        handle = ctypes.c_void_p()
        _check(lib.rpa_context_create(ctypes.byref(options), ctypes.byref(handle)))
        self._handle = handle

    @property
    def backend(self):
        """The backend the context runs ("reference", "simd" or "gpu"; auto resolved)."""
        value = ctypes.c_int()
        _check(_lib.rpa_context_get_backend(self._handle, ctypes.byref(value)))
        return {v: k for k, v in _BACKENDS.items()}[value.value]

    def __del__(self):
        if getattr(self, "_handle", None) and _lib is not None:
            _lib.rpa_context_destroy(self._handle)
            self._handle = None

    def attention(self, queries, kv_pages, context_lens, block_tables, query_start_loc, num_seqs, *,
                  softmax_scale=None, logits_soft_cap=None, sliding_window=None, softmax_aux=None,
                  return_lse=False, out=None, kv_dtype=None, k_scale=None, v_scale=None):
        """One call (plan and run); see ragged_paged_attention."""
        args, keep = _Args(), []
        _lib.rpa_attention_args_init(ctypes.byref(args))
        result, lse, _ = _bind_tensors(args, keep, queries, kv_pages, softmax_aux, out, return_lse, kv_dtype,
                                       k_scale, v_scale)
        _bind_metadata(args, keep, context_lens, block_tables, query_start_loc, num_seqs, sliding_window)
        _bind_scalars(args, softmax_scale, logits_soft_cap)
        _check(_lib.rpa_attention(self._handle, ctypes.byref(args)))
        return (result, lse) if return_lse else result

    def merge_state(self, out_a, lse_a, out_b, lse_b, *, out=None):
        """See rpa.merge_state."""
        args, keep = _MergeArgs(), []
        _lib.rpa_merge_args_init(ctypes.byref(args))
        gpu = _tensors.is_gpu(out_a)
        dl_stream, stream = _tensors.current_stream(out_a) if gpu else (None, 0)

        def bind(name, value, writable=False):
            b = _tensors.borrow_float(name, value, dl_stream, writable)
            keep.append(b)
            return b

        a = bind("out_a", out_a)
        args.out_a = a.tensor
        args.lse_a = bind("lse_a", lse_a).tensor
        args.out_b = bind("out_b", out_b).tensor
        args.lse_b = bind("lse_b", lse_b).tensor
        result = _tensors.empty(out_a, a.shape) if out is None else out
        lse = _tensors.empty(result, a.shape[:2], float32=True)
        if result is None or lse is None:
            raise ValueError("out: rpa cannot allocate in out_a's framework; pass out=")
        args.out = bind("out", result, writable=True).tensor
        args.lse = bind("lse", lse, writable=True).tensor
        args.memory = a.memory
        args.stream = stream
        _check(_lib.rpa_merge_states(self._handle, ctypes.byref(args)))
        return result, lse

    def plan(self, queries, kv_pages, context_lens, block_tables, query_start_loc, num_seqs, *,
             sliding_window=None, softmax_aux=None, return_lse=False, out=None, kv_dtype=None,
             device_metadata=False, max_query_len=0, max_context_len=0):
        """Plans calls with this metadata and these tensors' shapes, dtypes and layouts (their values are
        not read, except the metadata, which the plan copies). Returns a Plan.

        device_metadata=True (gpu backend, GPU tensors): the int32 metadata tensors stay on the device and
        every run reads them, so they may be rewritten in place between runs or graph replays (keep them
        alive while the plan lives); max_query_len and max_context_len bound their values (0: T and
        W * page_size), and Plan.check() reports a run that found them breaking a rule."""
        return Plan(self, queries, kv_pages, context_lens, block_tables, query_start_loc, num_seqs,
                    sliding_window, softmax_aux, return_lse, out, kv_dtype,
                    (max_query_len, max_context_len) if device_metadata else None)


class Plan:
    """A planned batch (Context.plan): run it once per layer with new queries and KV of the planned
    layouts. Runs of one plan may come from several threads at once."""

    def __init__(self, context, queries, kv_pages, context_lens, block_tables, query_start_loc, num_seqs,
                 sliding_window, softmax_aux, return_lse, out, kv_dtype=None, device_bounds=None):
        self._context = context  # a plan must be destroyed before its context
        self._return_lse = return_lse
        self._kv_dtype = kv_dtype
        self._softmax_aux = softmax_aux
        self._fast = None  # see _learn
        args, keep = _Args(), []
        _lib.rpa_attention_args_init(ctypes.byref(args))
        _bind_tensors(args, keep, queries, kv_pages, softmax_aux, out, return_lse, kv_dtype)
        self._out_shape = tuple(args.queries.shape[:3])
        if device_bounds is None:
            _bind_metadata(args, keep, context_lens, block_tables, query_start_loc, num_seqs, sliding_window)
        else:
            # Host validation of num_seqs and the window, without the metadata values.
            _bind_metadata(args, keep, [0], [[0]], [0, 0], num_seqs, sliding_window)
            for name, value in (("context_lens", context_lens), ("block_tables", block_tables),
                                ("query_start_loc", query_start_loc)):
                borrowed = _tensors.borrow_device_int32(name, value)
                keep.append(borrowed)
                setattr(args, name, borrowed.tensor)
            args.metadata_memory = _tensors.MEMORY_DEVICE
            for name, bound in zip(("max_query_len", "max_context_len"), device_bounds):
                if isinstance(bound, bool) or not isinstance(bound, (int, np.integer)) or not 0 <= bound < 2**31:
                    raise ValueError("%s: expected an integer in [0, 2**31), got %r" % (name, bound))
                setattr(args, name, int(bound))
            self._metadata = keep[-3:]  # the plan reads these tensors at every run
        handle = ctypes.c_void_p()
        _check(_lib.rpa_plan_create(context._handle, ctypes.byref(args), ctypes.byref(handle)))
        self._handle = handle

    def __del__(self):
        if getattr(self, "_handle", None) and _lib is not None:
            _lib.rpa_plan_destroy(self._handle)
            self._handle = None

    def run(self, queries, kv_pages, *, softmax_scale=None, logits_soft_cap=None, softmax_aux=None, out=None,
            k_scale=None, v_scale=None):
        """Runs the plan; the tensors must have the planned shapes, dtypes and layouts. softmax_aux
        defaults to the sinks given to plan(). Returns out, or (out, lse) when planned with return_lse."""
        sinks = self._softmax_aux if softmax_aux is None else softmax_aux
        kv = tuple(kv_pages) if isinstance(kv_pages, (tuple, list)) else (kv_pages,)
        scaled = k_scale is not None or v_scale is not None
        fast = self._fast  # read once: another thread's run may replace it
        if fast is not None and not scaled:
            done = self._run_fast(fast, queries, kv, sinks, out, softmax_scale, logits_soft_cap)
            if done is not None:
                return done
        args, keep = _Args(), []
        _lib.rpa_attention_args_init(ctypes.byref(args))
        result, lse, _ = _bind_tensors(args, keep, queries, kv_pages, sinks, out, self._return_lse,
                                       self._kv_dtype, k_scale, v_scale)
        _bind_scalars(args, softmax_scale, logits_soft_cap)
        _check(_lib.rpa_plan_run(self._handle, ctypes.byref(args)))
        if not scaled:
            self._learn(args, (queries,) + kv + ((sinks,) if sinks is not None else ()) + (result,)
                        + ((lse,) if lse is not None else ()))
        return (result, lse) if self._return_lse else result

    # The fast path: a run whose tensors are of the kinds and layouts of the last general run (numpy arrays,
    # BFloat16Arrays, torch tensors) reuses that run's argument struct and swaps the data pointers, skipping
    # the borrowing (the library still validates every run). Learned only from a run that borrowed each
    # tensor in place, so a value the general path would copy or convert never takes it.
    def _learn(self, args, values):
        fields = ["queries"] + (["kv_pages"] if args.kv_pages.ndim else ["k_cache", "v_cache"])
        fields += (["softmax_aux"] if args.softmax_aux.ndim else []) + ["out"] + (["lse"] if args.lse.ndim else [])
        slots = []
        for field, value in zip(fields, values):
            layout = _tensors.layout_key(value)
            if layout is None or layout[1] != getattr(args, field).data:
                self._fast = None
                return
            slots.append((getattr(_Args, field).offset, layout[0]))
        self._fast = (bytes(args), tuple(slots))

    def _run_fast(self, fast, queries, kv, sinks, out, softmax_scale, logits_soft_cap):
        template, slots = fast
        result = _tensors.empty(queries, self._out_shape) if out is None else out
        lse = _tensors.empty(result, self._out_shape[:2], float32=True) if self._return_lse else None
        values = (queries,) + kv + ((sinks,) if sinks is not None else ()) + (result,) + ((lse,) if lse is not None else ())
        if len(values) != len(slots):
            return None
        args = _Args.from_buffer_copy(template)
        for value, (offset, key) in zip(values, slots):
            layout = _tensors.layout_key(value)
            if layout is None or layout[0] != key:
                return None
            _POINTER.pack_into(args, offset, layout[1])  # rpa_tensor.data is the struct's first field
        args.softmax_scale, args.logits_soft_cap = 0.0, 0.0
        _bind_scalars(args, softmax_scale, logits_soft_cap)
        if args.memory == _tensors.MEMORY_DEVICE:
            args.stream = _tensors.current_stream(queries)[1]
        _check(_lib.rpa_plan_run(self._handle, ctypes.byref(args)))
        return (result, lse) if self._return_lse else result

    def check(self):
        """Device metadata: raises InvalidArgumentError (with host validation's message) when a run since the
        last check skipped a sequence whose metadata broke a rule. Waits for the plan's work."""
        _check(_lib.rpa_plan_get_error(self._handle))


def merge_state(out_a, lse_a, out_b, lse_b, *, out=None, backend="auto"):
    """Merges two attention states of the same rows over disjoint key sets (for instance a shared prefix
    and each sequence's suffix, each computed with return_lse=True) into the state over their union:
    returns (out, lse). out_* are [T, H, D] (out is returned in out_a's dtype unless given), lse_* [T, H]
    natural-log denominators; a -inf lse contributes nothing (its out is not read) and two give 0 and -inf.
    A base-2 lse converts as lse2 * ln(2)."""
    return _context(backend).merge_state(out_a, lse_a, out_b, lse_b, out=out)


def ragged_paged_attention(queries, kv_pages, context_lens, block_tables, query_start_loc, num_seqs, *,
                           softmax_scale=None, logits_soft_cap=None, sliding_window=None, softmax_aux=None,
                           return_lse=False, backend="auto", out=None, kv_dtype=None, k_scale=None, v_scale=None):
    """Ragged paged attention (the contract is in rpa's README), on a process-wide context of `backend`
    (one per GPU for GPU tensors).

    queries [T, QH, D]; kv_pages [P, page_size, 2*KVH, D] combined (K of head h at 2h, V at 2h+1) or a
    pair (k_cache, v_cache) of [P, page_size, KVH, D]; context_lens [S]; block_tables [S, W];
    query_start_loc [S+1]; num_seqs an int (or a one-element array). softmax_aux: 1-D [QH] is one sink
    per q head; 2-D [H_s, n] with H_s in {1, KVH, QH}. Returns out [T, QH, D] in the queries' dtype (or
    writes into `out`), and with return_lse=True the pair (out, lse [T, QH] float32).

    A quantised cache: kv_dtype "fp8_e4m3", "fp8_e5m2" or "int8" with uint8 codes (or int8 values), inferred
    for int8 and ml_dtypes float8 arrays and torch float8 / int8 tensors (CPU or GPU; other GPU tensors of
    1-byte codes need kv_dtype); k_scale and v_scale a float or a [KVH] array each on the host (default
    1.0): a stored x means x * scale.

    Every tensor may be a numpy array or any DLPack tensor (torch, CuPy, JAX, ...), borrowed without a
    copy: GPU tensors run on the GPU backend as device memory, on the framework's current stream, and the
    results are new tensors of the queries' framework and device. JAX arrays go through rpa.jax.

    >>> import numpy as np, rpa
    >>> q = np.ones((1, 2, 4), np.float32)                  # one token, 2 heads, head_dim 4
    >>> kv = np.zeros((1, 16, 2, 4), np.float32)            # one page of 16 slots, 1 kv head (K, V)
    >>> kv[0, :3, 1] = [[1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3]]   # V of the 3 tokens
    >>> out = rpa.ragged_paged_attention(q, kv, [3], [[0]], [0, 1], 1)
    >>> out[0, 0].tolist()                                   # equal scores: the mean of V
    [2.0, 2.0, 2.0, 2.0]
    """
    if _tensors.framework(queries) == "jax":
        from . import jax as rpa_jax  # immutable arrays: the XLA custom call allocates the outputs
        return rpa_jax.ragged_paged_attention(
            queries, kv_pages, context_lens, block_tables, query_start_loc, num_seqs,
            softmax_scale=softmax_scale, logits_soft_cap=logits_soft_cap, sliding_window=sliding_window,
            softmax_aux=softmax_aux, return_lse=return_lse, backend=backend, out=out)
    context = _context(backend, _tensors.device(queries))
    return context.attention(queries, kv_pages, context_lens, block_tables, query_start_loc, num_seqs,
                             softmax_scale=softmax_scale, logits_soft_cap=logits_soft_cap,
                             sliding_window=sliding_window, softmax_aux=softmax_aux, return_lse=return_lse,
                             out=out, kv_dtype=kv_dtype, k_scale=k_scale, v_scale=v_scale)


def write_kv(keys, values, slot_mapping, kv_pages, *, kv_dtype=None, k_scale=None, v_scale=None, backend="auto"):
    """Writes new keys and values [N, KVH, D] into slots slot_mapping [N] (page * page_size + offset; -1
    skips; a later token wins a repeated slot) of a paged cache, in place: kv_pages combined
    [P, page_size, 2*KVH, D] or the pair (k_cache, v_cache), each written without a copy. A quantised cache
    (kv_dtype and scales as in ragged_paged_attention) stores x / scale rounded to nearest even, saturated
    for fp8_e4m3 and int8, infinite past the range for fp8_e5m2.

    Host arrays are written on the host. GPU tensors (keys, values and the cache on one device) are
    written by one kernel queued on the framework's current stream, without a sync; slot_mapping is read on
    the host (the library validates every slot first), so a GPU slot_mapping is copied back, with a sync.
    """
    lib = _library()
    keep = []
    args = _WriteArgs()
    lib.rpa_write_kv_args_init(ctypes.byref(args))
    gpu = _tensors.is_gpu(keys)
    dl_stream, args.stream = _tensors.current_stream(keys) if gpu else (None, 0)
    bind, bound = _binder(keep, dl_stream)
    args.keys = bind("keys", keys)
    args.values = bind("values", values)
    args.memory = bound[0].memory
    slots = _tensors.borrow_int32("slot_mapping", slot_mapping, _device_to_host)
    keep.append(slots)
    args.slot_mapping = _tensors.descriptor(slots, _DTYPE_I32)
    given = list(kv_pages) if isinstance(kv_pages, (tuple, list)) else [kv_pages]
    codes = _bind_cache(args, keep, kv_pages, kv_dtype, k_scale, v_scale, lambda n, v, codes=None: bind(n, v, codes, True))
    for array in codes:
        if not array.flags.writeable or not any(np.shares_memory(array, np.asarray(g)) for g in given
                                                if type(g).__module__.split(".")[0] != "torch"):
            if not any(type(g).__module__.split(".")[0] == "torch" for g in given):
                raise ValueError("kv_pages: the cache must be a writeable array with non-negative strides and a "
                                 "contiguous last dimension (it is written in place)")
    _check(lib.rpa_write_kv(_context(backend, bound[0].device)._handle, ctypes.byref(args)))


# The golden-reference toolkit (cases.py, testing.py): case files, check, the conformance suite.
from .cases import Case, CheckReport, check, load_candidate, load_case, save_candidate, save_case  # noqa: E402
from . import testing  # noqa: E402

__all__ += ["Case", "CheckReport", "check", "load_candidate", "load_case", "save_candidate", "save_case", "testing"]
