#!/usr/bin/env python3
"""Writes the starting seeds of the libFuzzer harnesses: python3 tests/fuzz/make_corpus.py DIR

DIR/args and DIR/nan get byte strings from a fixed random seed (FuzzedDataProvider reads any bytes as a
call); DIR/case gets small, well-formed case and candidate files (every layout and dtype the reader
knows, sinks, every metadata key) and a few malformed variants of them. The checked-in corpus
tests/fuzz/corpus/NAME is the minimised merge of a long run started from these (README, "Sanitizers and
fuzzing"): regenerate with
  python3 tests/fuzz/make_corpus.py /tmp/seeds
  build-asan/tests/fuzz/fuzz_NAME -merge=1 tests/fuzz/corpus/NAME /tmp/seeds/NAME LONG_RUN_CORPUS
"""
import json
import os
import random
import struct
import sys

SIZES = {"F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "I32": 4}


def safetensors(tensors, metadata):
    """tensors: [(name, dtype, shape, bytes)] in data order; metadata: {str: str}."""
    header, offset = {}, 0
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(t[3] for t in tensors)


def floats(rng, dtype, count):
    values = [rng.uniform(-1, 1) for _ in range(count)]
    if dtype == "F32":
        return struct.pack("<%df" % count, *values)
    if dtype == "F16":
        return struct.pack("<%de" % count, *values)
    if dtype == "BF16":
        return b"".join(struct.pack("<f", v)[2:] for v in values)
    return bytes(rng.randrange(256) for _ in range(count))  # 8-bit codes


def ints(values):
    return struct.pack("<%di" % len(values), *values)


def case(rng, q_lens, context_lens, qh=2, kvh=1, d=4, page=4, q_dtype="F32", kv_dtype="F32", separate=False,
         sinks=0, metadata=None, padding=0):
    s = len(q_lens)
    width = max(-(-c // page) for c in context_lens) + 1
    pages = s * width + 1
    tables = [1 + i * width + j for i in range(s) for j in range(width)]
    starts = [0]
    for q in q_lens:
        starts.append(starts[-1] + q)
    t = starts[-1] + padding
    tensors = [("queries", q_dtype, [t, qh, d], floats(rng, q_dtype, t * qh * d))]
    if separate:
        for name in ("k_cache", "v_cache"):
            tensors.append((name, kv_dtype, [pages, page, kvh, d], floats(rng, kv_dtype, pages * page * kvh * d)))
    else:
        tensors.append(("kv_pages", kv_dtype, [pages, page, 2 * kvh, d], floats(rng, kv_dtype, pages * page * 2 * kvh * d)))
    tensors += [("context_lens", "I32", [s], ints(context_lens)), ("block_tables", "I32", [s, width], ints(tables)),
                ("query_start_loc", "I32", [s + 1], ints(starts))]
    if sinks:
        tensors.append(("softmax_aux", "F32", [sinks, 1], floats(rng, "F32", sinks)))
    meta = {"num_seqs": str(s)}
    meta.update(metadata or {})
    return safetensors(tensors, meta)


def main():
    out = sys.argv[1]
    rng = random.Random(8)
    for name, count in (("args", 48), ("nan", 48)):
        os.makedirs(os.path.join(out, name), exist_ok=True)
        for i in range(count):
            data = bytes(rng.randrange(256) for _ in range(rng.choice((16, 64, 128, 256, 512))))
            with open(os.path.join(out, name, "seed-%02d" % i), "wb") as f:
                f.write(data)
    files = {
        "decode": case(rng, [1, 1], [5, 9]),
        "prefill": case(rng, [3], [7], qh=4, kvh=2),
        "mixed_bf16": case(rng, [2, 1, 0], [6, 3, 4], q_dtype="BF16", kv_dtype="BF16", padding=2),
        "separate_f16": case(rng, [1, 2], [4, 8], separate=True, q_dtype="F16", kv_dtype="F16"),
        "fp8_e4m3": case(rng, [1, 1], [5, 6], kv_dtype="F8_E4M3"),
        "fp8_e5m2": case(rng, [2], [9], kv_dtype="F8_E5M2", separate=True),
        "int8": case(rng, [1], [3], kv_dtype="I8"),
        "sinks": case(rng, [1, 1], [4, 7], qh=4, kvh=2, sinks=2),
        "metadata": case(rng, [2, 1], [8, 5], metadata={"softmax_scale": "0.25", "logits_soft_cap": "30",
                                                         "sliding_window": "3", "note": "seed"}),
        "bad_metadata": case(rng, [1], [2], metadata={"num_seqs": "1.5", "softmax_scale": "nan"}),
        "candidate": safetensors([("output", "F32", [2, 2, 4], floats(rng, "F32", 16)),
                                  ("lse", "F32", [2, 2], floats(rng, "F32", 4))], None),
    }
    good = files["decode"]
    files["truncated"] = good[: len(good) // 2]
    files["header_only"] = good[: 8 + struct.unpack("<Q", good[:8])[0]]
    files["long_header_length"] = struct.pack("<Q", 1 << 40) + good[8:]
    os.makedirs(os.path.join(out, "case"), exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(out, "case", name + ".safetensors"), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
