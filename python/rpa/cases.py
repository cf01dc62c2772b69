"""Case and candidate files (safetensors or .npz) as numpy arrays, and `check` through the `rpa` tool.

A case holds the inputs of one ragged paged attention call; a candidate holds a kernel's answer (README,
"Case files"). The comparison and its diagnosis have one home, the `rpa check` command (golden/ in C++):
`check` writes the two files and reads the tool's JSON report, so Python and the command line can never
disagree about which rows are wrong or why.
"""

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np

__all__ = ["Case", "CheckReport", "load_case", "save_case", "load_candidate", "save_candidate", "check", "tool_path"]

try:  # bfloat16 arrays when ml_dtypes (or JAX) is installed; else rpa.BFloat16Array bit patterns
    import ml_dtypes
    _BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:
    _BF16 = None

_NUMPY = {"F32": np.float32, "F16": np.float16, "I32": np.int32, "I8": np.int8, "F8_E4M3": np.uint8,
          "F8_E5M2": np.uint8, "F64": np.float64, "I64": np.int64, "U8": np.uint8, "I16": np.int16,
          "U16": np.uint16, "U32": np.uint32, "U64": np.uint64, "BOOL": np.bool_}
_TENSORS = ("queries", "kv_pages", "k_cache", "v_cache", "context_lens", "block_tables", "query_start_loc",
            "softmax_aux")
_SCALARS = ("softmax_scale", "logits_soft_cap", "sliding_window")


class Case:
    """One attention call's inputs. Float arrays are float32, float16, bfloat16 (ml_dtypes, or
    rpa.BFloat16Array without it); metadata int32. kv_pages is None when k_cache/v_cache hold the KV;
    softmax_aux is None or [H_s, n]; softmax_scale, logits_soft_cap, sliding_window are None for the
    contract's default; notes holds any other metadata (a suite case's name and what it probes)."""

    def __init__(self, queries, kv_pages=None, context_lens=None, block_tables=None, query_start_loc=None,
                 num_seqs=None, k_cache=None, v_cache=None, softmax_aux=None, softmax_scale=None,
                 logits_soft_cap=None, sliding_window=None, notes=None):
        self.queries, self.kv_pages, self.k_cache, self.v_cache = queries, kv_pages, k_cache, v_cache
        self.context_lens = np.asarray(context_lens, np.int32)
        self.block_tables = np.asarray(block_tables, np.int32)
        self.query_start_loc = np.asarray(query_start_loc, np.int32)
        self.num_seqs = len(self.context_lens) if num_seqs is None else int(num_seqs)
        self.softmax_aux = softmax_aux
        self.softmax_scale, self.logits_soft_cap, self.sliding_window = softmax_scale, logits_soft_cap, sliding_window
        self.notes = dict(notes or {})

    @property
    def name(self):
        return self.notes.get("suite_case", "")

    def tensors(self):
        """The case's arrays by file name (absent ones left out)."""
        return {name: getattr(self, name) for name in _TENSORS if getattr(self, name) is not None}

    def run(self, backend="reference", return_lse=True, out=None):
        """The case through rpa.ragged_paged_attention: (out, lse), or out without lse."""
        from . import ragged_paged_attention
        kv = self.kv_pages if self.kv_pages is not None else (self.k_cache, self.v_cache)
        return ragged_paged_attention(self.queries, kv, self.context_lens, self.block_tables, self.query_start_loc,
                                      self.num_seqs, softmax_scale=self.softmax_scale,
                                      logits_soft_cap=self.logits_soft_cap, sliding_window=self.sliding_window,
                                      softmax_aux=self.softmax_aux, return_lse=return_lse, backend=backend, out=out)

    def __repr__(self):
        shapes = ", ".join("%s %s" % (k, list(_shape(v))) for k, v in self.tensors().items())
        return "Case(%s%s, num_seqs=%d)" % (("%s: " % self.name) if self.name else "", shapes, self.num_seqs)


def _shape(array):
    return array.shape


def _dtype_name(array):
    from . import BFloat16Array
    if isinstance(array, BFloat16Array) or getattr(array, "dtype", None) == _BF16 and _BF16 is not None:
        return "BF16"
    dtype = np.asarray(array).dtype
    if dtype.name == "bfloat16":
        return "BF16"
    for name, numpy_type in _NUMPY.items():
        if dtype == np.dtype(numpy_type) and name not in ("F8_E4M3", "F8_E5M2"):
            return name
    raise ValueError("dtype %s cannot be stored" % dtype)


def _raw(array):
    """(safetensors dtype name, C-contiguous little-endian bytes) of an array."""
    from . import BFloat16Array
    name = _dtype_name(array)
    if isinstance(array, BFloat16Array):
        data = array.bits
    elif name == "BF16":
        data = np.asarray(array).view(np.uint16)
    else:
        data = np.asarray(array)
    return name, np.ascontiguousarray(data).astype(data.dtype.newbyteorder("<"), copy=False).tobytes()


def _from_raw(name, shape, data, tensor):
    if name == "BF16":
        bits = np.frombuffer(data, "<u2").reshape(shape).astype(np.uint16)
        if _BF16 is not None:
            return bits.view(_BF16)
        from . import BFloat16Array
        return BFloat16Array(bits)
    if name not in _NUMPY:
        raise ValueError("tensor '%s': unknown dtype '%s'" % (tensor, name))
    return np.frombuffer(data, np.dtype(_NUMPY[name]).newbyteorder("<")).reshape(shape).astype(_NUMPY[name])


def _read_safetensors(path):
    """(tensors dict, metadata dict) of a safetensors file, with the structural checks of the C++ reader."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError("%s: truncated: %d bytes, fewer than the 8-byte header length" % (path, len(blob)))
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8:
        raise ValueError("%s: header length %d runs past the end of the file (%d bytes)" % (path, n, len(blob)))
    pairs = json.loads(blob[8:8 + n].decode("utf-8"), object_pairs_hook=lambda p: p)
    names = [k for k, _ in pairs]
    for k in names:
        if names.count(k) > 1:
            raise ValueError("%s: tensor '%s': named twice in the header" % (path, k))
    data = blob[8 + n:]
    tensors, metadata, spans = {}, {}, []
    for name, entry in pairs:
        if name == "__metadata__":
            metadata = dict(entry)
            for key, value in metadata.items():
                if not isinstance(value, str):
                    raise ValueError("%s: __metadata__: value of '%s' is not a string" % (path, key))
            continue
        entry = dict(entry)
        begin, end = entry["data_offsets"]
        if not 0 <= begin <= end <= len(data):
            raise ValueError("%s: tensor '%s': data_offsets [%d, %d] run past the end of the data (%d bytes)"
                             % (path, name, begin, end, len(data)))
        spans.append((begin, end, name))
        tensors[name] = _from_raw(entry["dtype"], tuple(entry["shape"]), data[begin:end], name)
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise ValueError("%s: tensor '%s': its bytes overlap those of tensor '%s'" % (path, n1, n0))
    return tensors, metadata


def _write_safetensors(path, tensors, metadata):
    header, chunks, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, array in tensors.items():
        dtype, data = _raw(array)
        header[name] = {"dtype": dtype, "shape": list(_shape(array)), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(chunks))


def _read(path):
    """(tensors, metadata) from .safetensors or .npz (an .npz keeps metadata and bf16 names in __metadata__)."""
    if str(path).endswith(".npz"):
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("__metadata__"))) if "__metadata__" in arrays else {}
        for name in meta.pop("__bf16__", "").split(","):
            if name:
                arrays[name] = _from_raw("BF16", arrays[name].shape, arrays[name].astype("<u2").tobytes(), name)
        return arrays, meta
    return _read_safetensors(path)


def _write(path, tensors, metadata):
    if str(path).endswith(".npz"):
        arrays, bf16 = {}, []
        for name, array in tensors.items():
            dtype, data = _raw(array)
            if dtype == "BF16":
                bf16.append(name)
                arrays[name] = np.frombuffer(data, "<u2").reshape(_shape(array))
            else:
                arrays[name] = np.asarray(array)
        meta = dict(metadata, __bf16__=",".join(bf16))
        np.savez(path, __metadata__=np.array(json.dumps(meta)), **arrays)
    else:
        _write_safetensors(path, tensors, metadata)


def _number(metadata, key, kind):
    if key not in metadata:
        return None
    try:
        return kind(float(metadata[key])) if kind is int else kind(metadata[key])
    except ValueError:
        raise ValueError("__metadata__: '%s' is %r, not a number" % (key, metadata[key]))


def load_case(path):
    """A Case from a .safetensors or .npz file."""
    tensors, metadata = _read(path)
    for name in tensors:
        if name not in _TENSORS:
            raise ValueError("%s: tensor '%s': not a case tensor" % (path, name))
    for name in ("queries", "context_lens", "block_tables", "query_start_loc"):
        if name not in tensors:
            raise ValueError("%s: tensor '%s' is missing" % (path, name))
    if "num_seqs" not in metadata:
        raise ValueError("%s: __metadata__: 'num_seqs' is missing" % path)
    notes = {k: v for k, v in metadata.items() if k != "num_seqs" and k not in _SCALARS}
    return Case(tensors["queries"], tensors.get("kv_pages"), tensors["context_lens"], tensors["block_tables"],
                tensors["query_start_loc"], _number(metadata, "num_seqs", int), k_cache=tensors.get("k_cache"),
                v_cache=tensors.get("v_cache"), softmax_aux=tensors.get("softmax_aux"),
                softmax_scale=_number(metadata, "softmax_scale", float),
                logits_soft_cap=_number(metadata, "logits_soft_cap", float),
                sliding_window=_number(metadata, "sliding_window", int), notes=notes)


def save_case(path, case):
    """Writes a Case as .safetensors or .npz (by the file name's ending)."""
    metadata = dict(case.notes, num_seqs=str(case.num_seqs))
    for key in _SCALARS:
        value = getattr(case, key)
        if value is not None:
            metadata[key] = repr(float(value)) if key != "sliding_window" else str(int(value))
    tensors = case.tensors()
    for name in ("context_lens", "block_tables", "query_start_loc"):
        tensors[name] = np.asarray(tensors[name], np.int32)
    _write(path, tensors, metadata)


def load_candidate(path):
    """(output, lse or None) from a candidate file."""
    tensors, _ = _read(path)
    return tensors["output"], tensors.get("lse")


def save_candidate(path, output, lse=None):
    """Writes a candidate: output [T, QH, D] in any float dtype, lse [T, QH] stored as float32."""
    tensors = {"output": output}
    if lse is not None:
        tensors["lse"] = np.asarray(lse, np.float32)
    _write(path, tensors, {})


def tool_path():
    """The `rpa` command: $RPA_TOOL, else the build tree's beside librpa (build/core -> build/tools), else
    the one next to the Python interpreter or on PATH."""
    if os.environ.get("RPA_TOOL"):
        return os.environ["RPA_TOOL"]
    from . import _library
    library_dir = os.path.dirname(os.path.abspath(getattr(_library(), "_name", "") or "."))
    candidates = [os.path.join(library_dir, os.pardir, "tools", "rpa"), os.path.join(sys.prefix, "bin", "rpa")]
    for path in candidates:
        if os.access(path, os.X_OK) and os.path.isfile(path):
            return os.path.normpath(path)
    found = shutil.which("rpa")
    if found:
        return found
    raise OSError("the rpa command was not found: set RPA_TOOL to its path (tried %s and PATH)" % ", ".join(candidates))


def _run_tool(args):
    result = subprocess.run([tool_path()] + [str(a) for a in args], capture_output=True, text=True)
    if result.returncode == 2:
        raise ValueError(result.stderr.strip() or "rpa %s: bad input" % args[0])
    if result.returncode not in (0, 1):
        raise RuntimeError("rpa %s failed (%d): %s" % (args[0], result.returncode, result.stderr.strip()))
    return result


class CheckReport:
    """The report of `rpa check`: passed, wrong_rows (ascending), max_abs_error, max_rel_error, runs (with
    coordinates), diagnosis (one {row, hypothesis, detail} per wrong row), unexplained_rows, and the
    full JSON as data. str() is the command's own text."""

    def __init__(self, data, text):
        self.data, self.text = data, text
        self.passed = bool(data["pass"])
        self.wrong_rows = list(data["wrong_rows"])
        self.max_abs_error, self.max_rel_error = data["max_abs_error"], data["max_rel_error"]
        self.runs, self.diagnosis = data["runs"], data["diagnosis"]
        self.unexplained_rows = list(data["unexplained_rows"])

    def hypotheses(self):
        """{row: hypothesis} of the wrong rows."""
        return {d["row"]: d["hypothesis"] for d in self.diagnosis}

    def __bool__(self):
        return self.passed

    def __str__(self):
        return self.text

    __repr__ = __str__


def _as_candidate(candidate):
    if isinstance(candidate, (str, os.PathLike)):
        return load_candidate(candidate)
    if isinstance(candidate, dict):
        return candidate["output"], candidate.get("lse")
    if isinstance(candidate, tuple):
        return candidate
    return candidate, None


def check(case, candidate, atol=None, rtol=None):
    """Checks a candidate against the reference for `case` with `rpa check`, returns a CheckReport.
    case: a Case or a case file's path; candidate: the output array, (output, lse), {"output", "lse"}
    or a candidate file's path. atol/rtol None: the defaults of the output's dtype."""
    with tempfile.TemporaryDirectory(prefix="rpa-check-") as tmp:
        case_path = case if isinstance(case, (str, os.PathLike)) else os.path.join(tmp, "case.safetensors")
        if not isinstance(case, (str, os.PathLike)):
            save_case(case_path, case)
        output, lse = _as_candidate(candidate)
        candidate_path = os.path.join(tmp, "candidate.safetensors")
        save_candidate(candidate_path, output, lse)
        report = os.path.join(tmp, "report.json")
        args = ["check", case_path, candidate_path, "--json", report]
        if atol is not None:
            args += ["--atol", repr(float(atol))]
        if rtol is not None:
            args += ["--rtol", repr(float(rtol))]
        result = _run_tool(args)
        with open(report) as f:
            return CheckReport(json.load(f), result.stdout)
