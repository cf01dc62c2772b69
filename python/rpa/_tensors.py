"""One home for turning a caller's array into an rpa_tensor descriptor, without copying tensor data.

Accepted: numpy arrays (float32, float16, ml_dtypes/JAX bfloat16, int), ``rpa.BFloat16Array``, and any
object with ``__dlpack__``/``__dlpack_device__`` (torch CPU/CUDA/ROCm, CuPy, JAX, numpy >= 1.22): its
memory is borrowed through a DLPack capsule that stays alive as long as the descriptor does. CPU memory
runs as host memory, GPU memory as device memory on the stream the caller's framework currently uses
(DLPack's stream protocol makes the producer's pending work visible to that stream first).
"""

import ctypes
import sys

import numpy as np

_DTYPE_F32, _DTYPE_F16, _DTYPE_BF16, _DTYPE_I32 = 0, 1, 2, 6
MEMORY_HOST, MEMORY_DEVICE = 0, 1


class Tensor(ctypes.Structure):
    """Mirror of rpa_tensor (include/rpa/rpa.h)."""
    _fields_ = [("data", ctypes.c_void_p), ("dtype", ctypes.c_int), ("ndim", ctypes.c_int32),
                ("shape", ctypes.c_int64 * 4), ("strides", ctypes.c_int64 * 4)]


# DLPack's legacy ABI (dlpack.h 0.6 as Debian's libdlpack-dev ships it, unchanged up to 1.0's legacy
# capsule "dltensor", which every producer still exports when no max_version is asked for).
class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


_KDL_CPU, _KDL_CUDA, _KDL_CUDA_HOST, _KDL_ROCM, _KDL_ROCM_HOST, _KDL_CUDA_MANAGED = 1, 2, 3, 10, 11, 13
_HOST_DEVICES = (_KDL_CPU, _KDL_CUDA_HOST, _KDL_ROCM_HOST)
_GPU_DEVICES = (_KDL_CUDA, _KDL_ROCM, _KDL_CUDA_MANAGED)
_KDL_INT, _KDL_UINT, _KDL_FLOAT, _KDL_BFLOAT = 0, 1, 2, 4
_DL_FLOATS = {(_KDL_FLOAT, 32): _DTYPE_F32, (_KDL_FLOAT, 16): _DTYPE_F16, (_KDL_BFLOAT, 16): _DTYPE_BF16}
_NP_FLOATS = {np.dtype(np.float32): _DTYPE_F32, np.dtype(np.float16): _DTYPE_F16}

_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


class Borrowed:
    """A descriptor plus what keeps its memory alive.

    memory: MEMORY_HOST or MEMORY_DEVICE; device: (DLPack device type, ordinal) for device memory.
    """
    __slots__ = ("tensor", "memory", "device", "keep")

    def __init__(self, tensor, memory, device, keep):
        self.tensor, self.memory, self.device, self.keep = tensor, memory, device, keep

    @property
    def shape(self):
        return tuple(self.tensor.shape[i] for i in range(self.tensor.ndim))


def framework(value):
    """'torch', 'cupy', 'jax', 'numpy' or 'dlpack' (any other producer)."""
    if isinstance(value, np.ndarray):
        return "numpy"
    module = type(value).__module__.split(".")[0]
    if module in ("torch", "cupy", "numpy"):
        return module
    if module in ("jax", "jaxlib"):
        return "jax"
    return "dlpack" if hasattr(value, "__dlpack__") else "numpy"


def is_gpu(value):
    """Whether `value` is a DLPack tensor in GPU memory."""
    if isinstance(value, np.ndarray) or not hasattr(value, "__dlpack_device__"):
        return False
    return int(value.__dlpack_device__()[0]) in _GPU_DEVICES


def current_stream(value):
    """(stream to ask the producer for under DLPack's protocol, stream handle rpa runs on) for a GPU tensor:
    the framework's current stream for torch and CuPy, the legacy default stream for any other producer."""
    legacy = _default_stream(value)
    kind = framework(value)
    handle = 0
    if kind == "torch":
        import torch
        # The raw getter skips building a torch.cuda.Stream object (microseconds on every call).
        raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
        handle = raw(value.device.index) if raw else torch.cuda.current_stream(value.device).cuda_stream
    elif kind == "cupy":
        import cupy
        handle = cupy.cuda.get_current_stream().ptr
    return (handle or legacy), handle


def _default_stream(value):
    """DLPack's number for the default stream of the GPU `value` lives on."""
    return 0 if int(value.__dlpack_device__()[0]) == _KDL_ROCM else 1


def layout_key(value):
    """(what fixes the descriptor rpa would make of `value`, its data pointer) for a numpy array, a
    BFloat16Array or a torch tensor, read without borrowing; None for any other object. Two values with
    equal keys borrow to descriptors that differ only in their data pointer (Plan.run's fast path)."""
    kind = type(value)
    if kind is np.ndarray:
        return (kind, value.dtype, value.shape, value.strides, value.flags.writeable), value.ctypes.data
    from . import BFloat16Array
    if kind is BFloat16Array:
        bits = value.bits
        return (kind, bits.dtype, bits.shape, bits.strides, bits.flags.writeable), bits.ctypes.data
    torch = sys.modules.get("torch")
    # Exact types only: a tensor subclass (DTensor, fake tensors) may not own plain memory at data_ptr().
    if torch is not None and (kind is torch.Tensor or kind is torch.nn.Parameter):
        return (kind, value.dtype, value.shape, value.stride(), value.device, value.requires_grad), value.data_ptr()
    return None


def _descriptor(data, dtype, shape, strides):
    if len(shape) > 4:
        raise ValueError("at most 4 dimensions")
    t = Tensor()
    t.data = data
    t.dtype = dtype
    t.ndim = len(shape)
    for i, (extent, stride) in enumerate(zip(shape, strides)):
        t.shape[i] = extent
        t.strides[i] = stride
    return t


def _usable(array):
    """Whether a numpy array starts on an item boundary with non-negative strides that are multiples of the
    item size and a contiguous last dimension."""
    return not array.ndim or (array.strides[-1] == array.itemsize and not array.ctypes.data % array.itemsize
                              and all(s >= 0 and s % array.itemsize == 0 for s in array.strides))


def descriptor(array, dtype):
    """The descriptor of a numpy array whose strides _usable accepts."""
    return _descriptor(array.ctypes.data, dtype, array.shape, [s // array.itemsize for s in array.strides])


def _from_numpy(name, array, dtype, writable):
    if writable and not (array.flags.writeable and _usable(array)):
        raise ValueError("%s: must be writeable with non-negative strides and a contiguous last dimension" % name)
    if not _usable(array):
        array = np.array(array, order="C")  # a new aligned copy: only host inputs rpa cannot describe
    try:
        tensor = descriptor(array, dtype)
    except ValueError as e:
        raise ValueError("%s: %s, got %d" % (name, e, array.ndim)) from None
    return Borrowed(tensor, MEMORY_HOST, None, array)


def _dlpack(name, value, stream):
    """(capsule, DLTensor) of a DLPack producer; the capsule owns the memory until it is collected."""
    device_type = int(value.__dlpack_device__()[0])
    try:
        capsule = value.__dlpack__(stream=stream) if device_type in _GPU_DEVICES else value.__dlpack__()
    except (BufferError, TypeError, RuntimeError) as e:
        raise ValueError("%s: cannot borrow it through DLPack: %s" % (name, e)) from None
    # Not renamed to "used_dltensor": we borrow, so the capsule's own destructor releases the tensor.
    dl = _DLTensor.from_address(_capsule_pointer(capsule, b"dltensor"))
    return capsule, dl


def _dl_layout(dl):
    shape = [dl.shape[i] for i in range(dl.ndim)]
    # NULL strides: compact row-major
    return shape, [dl.strides[i] for i in range(dl.ndim)] if dl.strides else _contiguous_strides(shape)


def _contiguous_strides(shape):
    strides, step = [0] * len(shape), 1
    for i in reversed(range(len(shape))):
        strides[i], step = step, step * shape[i]
    return strides


def borrow_float(name, value, stream=None, writable=False):
    """A float32 / float16 / bfloat16 tensor argument as a Borrowed descriptor.

    stream: the DLPack stream number the run will use (from current_stream), for GPU producers.
    No conversion changes a value: host float64 arrays are narrowed to float32 (a copy) only when every
    value survives, integer arrays are refused; DLPack tensors are never converted or copied.
    """
    from . import BFloat16Array  # the package's own bf16 carrier
    if isinstance(value, BFloat16Array):
        return _from_numpy(name, value.bits, _DTYPE_BF16, writable)
    if isinstance(value, np.ndarray) or not hasattr(value, "__dlpack__"):
        array = value if isinstance(value, np.ndarray) else np.asarray(value)
        if array.dtype.name == "bfloat16":  # ml_dtypes / JAX bfloat16 held by numpy
            return _from_numpy(name, array.view(np.uint16), _DTYPE_BF16, writable)
        if array.dtype == np.float64 and not writable:  # narrowed only when no value changes
            with np.errstate(over="ignore"):
                narrowed = array.astype(np.float32)
            changed = (narrowed.astype(np.float64) != array) & ~np.isnan(array)
            if changed.any():
                raise ValueError("%s: float64 value %r is not exactly a float32; convert it explicitly (e.g. "
                                 "array.astype(np.float32)) if rounding is intended" % (name, float(array[changed].flat[0])))
            array = narrowed
        elif array.dtype not in _NP_FLOATS:
            raise ValueError("%s: dtype %s is not float32, float16 or bfloat16 (or float64 holding float32 values)"
                             % (name, array.dtype))
        return _from_numpy(name, array, _NP_FLOATS[array.dtype], writable)

    return _borrow_dlpack(name, value, stream, lambda t: _DL_FLOATS.get((t.code, t.bits)),
                          "float32, float16 or bfloat16")


def borrow_codes(name, value, dtype, stream=None):
    """A DLPack tensor of 1-byte elements (uint8 codes, int8, float8) as the quantised cache of rpa dtype
    `dtype`, borrowed like borrow_float's DLPack tensors."""
    return _borrow_dlpack(name, value, stream, lambda t: dtype if t.bits == 8 else None,
                          "a 1-byte type (uint8 codes, int8 or float8)")


def _borrow_dlpack(name, value, stream, dtype_of, expected):
    """A DLPack tensor as a Borrowed descriptor of dtype dtype_of(DLPack dtype) (None: refused)."""
    capsule, dl = _dlpack(name, value, stream)
    dtype = dtype_of(dl.dtype) if dl.dtype.lanes == 1 else None
    if dtype is None:
        raise ValueError("%s: DLPack dtype (code %d, %d bits, %d lanes) is not %s"
                         % (name, dl.dtype.code, dl.dtype.bits, dl.dtype.lanes, expected))
    shape, strides = _dl_layout(dl)
    if any(s < 0 for s in strides) or (strides and strides[-1] != 1 and shape[-1] > 1):
        raise ValueError("%s: strides %s: rpa needs non-negative strides and a contiguous last dimension "
                         "(tensors in DLPack form are never copied)" % (name, strides))
    if shape and shape[-1] == 1:
        strides[-1] = 1  # any stride describes a dimension of extent 1
    device_type = dl.device.device_type
    if device_type not in _HOST_DEVICES + _GPU_DEVICES:
        raise ValueError("%s: DLPack device type %d is neither host nor a CUDA/ROCm GPU" % (name, device_type))
    try:
        tensor = _descriptor(dl.data + dl.byte_offset if dl.data else None, dtype, shape, strides)
    except ValueError as e:
        raise ValueError("%s: %s, got %d" % (name, e, dl.ndim)) from None
    if device_type in _HOST_DEVICES:
        return Borrowed(tensor, MEMORY_HOST, None, (value, capsule))
    return Borrowed(tensor, MEMORY_DEVICE, (device_type, dl.device.device_id), (value, capsule))


def borrow_device_int32(name, value):
    """A GPU int32 metadata tensor as a Borrowed descriptor of its own memory (device metadata: no copy,
    the plan reads it at every run)."""
    if not is_gpu(value):
        raise ValueError("%s: device metadata needs a GPU tensor (CUDA or ROCm), got %s" % (name, type(value).__name__))
    capsule, dl = _dlpack(name, value, _default_stream(value))
    if (dl.dtype.code, dl.dtype.bits, dl.dtype.lanes) != (_KDL_INT, 32, 1):
        raise ValueError("%s: device metadata must be int32 (DLPack code %d, %d bits)" % (name, dl.dtype.code, dl.dtype.bits))
    shape, strides = _dl_layout(dl)
    tensor = _descriptor(dl.data + dl.byte_offset, _DTYPE_I32, shape, strides)
    return Borrowed(tensor, MEMORY_DEVICE, (dl.device.device_type, dl.device.device_id), (value, capsule))


def borrow_int32(name, value, device_copy=None):
    """A metadata argument as a contiguous host int32 numpy array (a copy when needed: metadata is small).

    GPU tensors are read back through device_copy(dst_pointer, src_pointer, bytes, device) after the
    producer's work on them is made visible to the default stream.
    """
    if not isinstance(value, np.ndarray) and hasattr(value, "__dlpack__"):
        capsule, dl = _dlpack(name, value, _default_stream(value) if is_gpu(value) else None)
        if dl.dtype.code not in (_KDL_INT, _KDL_UINT) or dl.dtype.lanes != 1 or dl.dtype.bits not in (8, 16, 32, 64):
            raise ValueError("%s: DLPack dtype (code %d, %d bits) is not an integer type"
                             % (name, dl.dtype.code, dl.dtype.bits))
        shape, strides = _dl_layout(dl)
        np_dtype = np.dtype(("i" if dl.dtype.code == _KDL_INT else "u") + str(dl.dtype.bits // 8))
        count = int(np.prod(shape, dtype=np.int64))
        if dl.device.device_type in _GPU_DEVICES:
            if any(st != c for st, c, e in zip(strides, _contiguous_strides(shape), shape) if e > 1):
                raise ValueError("%s: a GPU metadata tensor must be contiguous" % name)
            array = np.empty(shape, np_dtype)
            if count:
                device_copy(array.ctypes.data, dl.data + dl.byte_offset, array.nbytes,
                            (dl.device.device_type, dl.device.device_id))
        else:
            span = (sum((e - 1) * s for e, s in zip(shape, strides)) + 1) if count else 0
            flat = np.ctypeslib.as_array((ctypes.c_byte * (span * np_dtype.itemsize)).from_address(
                dl.data + dl.byte_offset)) if span else np.empty(0, np.byte)
            array = np.lib.stride_tricks.as_strided(flat.view(np_dtype), shape,
                                                    [s * np_dtype.itemsize for s in strides]).copy()
        del capsule
        value = array
    array = np.asarray(value)
    if array.dtype.kind not in "iu":
        raise ValueError("%s: dtype %s is not an integer type" % (name, array.dtype))
    if array.size and (array.max() > np.iinfo(np.int32).max or array.min() < np.iinfo(np.int32).min):
        raise ValueError("%s: values do not fit in int32" % name)
    return np.ascontiguousarray(array, dtype=np.int32)



def empty(like, shape, float32=False):
    """A new array of `shape` in the framework, device and dtype of `like` (float32 when asked), or None
    when the framework cannot be written by rpa (JAX arrays are immutable; unknown GPU producers)."""
    from . import BFloat16Array
    kind = framework(like)
    if kind == "torch":
        import torch
        return torch.empty(shape, dtype=torch.float32 if float32 else like.dtype, device=like.device)
    if kind == "cupy":
        import cupy
        with cupy.cuda.Device(like.device.id):
            return cupy.empty(shape, dtype=np.float32 if float32 else like.dtype)
    if kind == "jax" or is_gpu(like):
        return None
    if float32:
        return np.empty(shape, np.float32)
    if isinstance(like, BFloat16Array):
        return BFloat16Array(np.empty(shape, np.uint16))
    if isinstance(like, np.ndarray):
        return np.empty(shape, like.dtype if like.dtype in _NP_FLOATS or like.dtype.name == "bfloat16" else np.float32)
    # Another host producer (a torch-less DLPack object, a list): numpy in the descriptor's dtype.
    dtype = borrow_float("queries", like).tensor.dtype
    return BFloat16Array(np.empty(shape, np.uint16)) if dtype == _DTYPE_BF16 else \
        np.empty(shape, np.float16 if dtype == _DTYPE_F16 else np.float32)


def device(value):
    """(DLPack device type, ordinal) of a GPU tensor, None for host memory."""
    return tuple(int(x) for x in value.__dlpack_device__()) if is_gpu(value) else None
