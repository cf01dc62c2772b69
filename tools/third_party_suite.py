"""Runs rpa's conformance suite through kernels nobody here wrote and checks them with `rpa suite check`:

  jax   JAX's ref_ragged_paged_attention (jax.experimental.pallas.ops.tpu.ragged_paged_attention), plain
        jnp on the default JAX device; it has no sinks, so sink cases are run without them
  flex  torch FlexAttention (torch.nn.attention.flex_attention, compiled) over the physical KV cache with a
        paged block mask (mask_mod maps each physical slot to its sequence's logical position), GQA through
        enable_gqa, the soft cap as score_mod, sinks applied to its output through its lse

    PYTHONPATH=python RPA_LIBRARY=build/core/librpa.so RPA_TOOL=build/tools/rpa \\
        python3 tools/third_party_suite.py --impl jax flex --out DIR --markdown DIR/table.md

Writes DIR/IMPL/ (the suite, each NAME.out.safetensors, report.json) and prints one table row per case.
Exit status: 0 when it ran (whatever the kernels' verdicts), 2 when an implementation's package is missing.
"""

import argparse
import importlib.util
import inspect
import math
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "python"))
import numpy as np  # noqa: E402

import rpa  # noqa: E402

REQUIRES = {"jax": ["jax"], "flex": ["torch"]}


def combined_kv(case):
    """The combined [P, page_size, 2*KVH, D] cache (K of head h at 2h, V at 2h+1) of either layout."""
    if case.kv_pages is not None:
        return np.asarray(case.kv_pages)
    k, v = np.asarray(case.k_cache), np.asarray(case.v_cache)
    kv = np.empty(k.shape[:2] + (2 * k.shape[2], k.shape[3]), k.dtype)
    kv[:, :, 0::2], kv[:, :, 1::2] = k, v
    return kv


def scale_of(case):
    return case.softmax_scale if case.softmax_scale is not None else 1 / math.sqrt(case.queries.shape[2])


def jax_kernel():
    import jax.numpy as jnp
    from jax.experimental.pallas.ops.tpu.ragged_paged_attention import ref_ragged_paged_attention as ref
    accepted = inspect.signature(ref).parameters

    def run(case):
        q = np.asarray(case.queries)
        kwargs = {"sm_scale": scale_of(case)}
        if case.sliding_window is not None:
            kwargs["sliding_window"] = case.sliding_window
        if case.logits_soft_cap is not None:
            kwargs["soft_cap"] = case.logits_soft_cap
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}
        out = ref(jnp.asarray(q), jnp.asarray(combined_kv(case)), jnp.asarray(case.context_lens),
                  jnp.asarray(case.block_tables), jnp.asarray(case.query_start_loc),
                  jnp.asarray([case.num_seqs], jnp.int32), **kwargs)
        result = np.zeros(q.shape, q.dtype)  # it returns only the covered rows
        covered = int(case.query_start_loc[case.num_seqs]) - int(case.query_start_loc[0])
        result[int(case.query_start_loc[0]):][:covered] = np.asarray(out)[:covered]
        return result
    return run


def flex_kernel():
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    device = "cuda" if torch.cuda.is_available() else "cpu"
    compiled = torch.compile(flex_attention, dynamic=True)

    def to_torch(array):
        array = np.asarray(array)
        if array.dtype.name == "bfloat16":
            return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16).to(device)
        return torch.from_numpy(np.ascontiguousarray(array)).to(device)

    def to_numpy(tensor):
        tensor = tensor.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            import ml_dtypes
            return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return tensor.numpy()

    # One mask_mod and score_mod for every case, reading this case's metadata from `state`: a new closure
    # per case would make torch.compile trace the kernel again each time.
    state = {}

    def mask_mod(b, h, q_idx, kv_idx):
        seq = state["seq"][q_idx]
        s = seq.clamp(min=0)
        page = state["logical"][s, kv_idx // state["page_size"]]
        key = page * state["page_size"] + kv_idx % state["page_size"]
        position = state["position"][q_idx]
        return ((seq >= 0) & (page >= 0) & (key <= position) & (key < state["context"][s]) &
                (key > position - state["window"]))

    def score_mod(score, b, h, q_idx, kv_idx):
        return state["cap"] * torch.tanh(score / state["cap"])

    def run(case):
        T, QH, D = case.queries.shape
        kv = combined_kv(case)
        P, page_size, KVH = kv.shape[0], kv.shape[1], kv.shape[2] // 2
        # The paged mask's metadata: each query row's sequence and position, each (sequence, physical
        # page)'s logical page index (-1: not the sequence's).
        seq_of_row, position = np.full(T, -1, np.int64), np.zeros(T, np.int64)
        logical = np.full((max(case.num_seqs, 1), P), -1, np.int64)
        for s in range(case.num_seqs):
            start, stop, length = (int(x) for x in (case.query_start_loc[s], case.query_start_loc[s + 1],
                                                    case.context_lens[s]))
            seq_of_row[start:stop] = s
            position[start:stop] = length - (stop - start) + np.arange(stop - start)
            for j in range(-(-length // page_size)):
                logical[s, case.block_tables[s, j]] = j
        state.update(seq=torch.from_numpy(seq_of_row).to(device), position=torch.from_numpy(position).to(device),
                     logical=torch.from_numpy(logical).to(device),
                     context=torch.from_numpy(np.asarray(case.context_lens[:max(case.num_seqs, 1)], np.int64)).to(device),
                     page_size=torch.tensor(page_size, device=device),
                     window=torch.tensor(case.sliding_window or 2**62, device=device),
                     cap=torch.tensor(float(case.logits_soft_cap or 1.0), device=device))
        capped = score_mod if case.logits_soft_cap is not None else None
        block_mask = create_block_mask(mask_mod, 1, None, T, P * page_size, device=device)
        q = to_torch(case.queries).permute(1, 0, 2).unsqueeze(0)
        kv_t = to_torch(kv).reshape(P * page_size, 2 * KVH, D)
        k = kv_t[:, 0::2].permute(1, 0, 2).unsqueeze(0).contiguous()
        v = kv_t[:, 1::2].permute(1, 0, 2).unsqueeze(0).contiguous()
        if "return_aux" in inspect.signature(flex_attention).parameters:  # torch >= 2.9
            from torch.nn.attention.flex_attention import AuxRequest
            out, aux = compiled(q, k, v, score_mod=capped, block_mask=block_mask, scale=scale_of(case),
                                enable_gqa=QH != KVH, return_aux=AuxRequest(lse=True))
            lse = aux.lse
        else:
            out, lse = compiled(q, k, v, score_mod=capped, block_mask=block_mask, scale=scale_of(case),
                                enable_gqa=QH != KVH, return_lse=True)
        out, lse = out[0].permute(1, 0, 2).float(), lse[0].permute(1, 0).float()  # [T, QH, D], [T, QH]
        if case.softmax_aux is not None:  # sinks join the denominator: out * Z / (Z + sum exp(sink))
            sinks = to_torch(np.asarray(case.softmax_aux, np.float32)).float()
            rows = {1: [0] * QH, KVH: [h // (QH // KVH) for h in range(QH)], QH: list(range(QH))}[sinks.shape[0]]
            sink_lse = torch.logsumexp(sinks[rows], dim=1)  # [QH]
            total = torch.logaddexp(lse, sink_lse.expand_as(lse))
            out = out * torch.exp(lse - total).nan_to_num(0.0)[..., None]
            lse = torch.where(state["seq"][:, None] >= 0, total, lse)
        return to_numpy(out.to(q.dtype)), to_numpy(lse)
    return run


KERNELS = {"jax": jax_kernel, "flex": flex_kernel}


def missing_packages(impl):
    return [p for p in REQUIRES[impl] if importlib.util.find_spec(p) is None]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impl", nargs="+", choices=sorted(KERNELS), default=["jax", "flex"])
    parser.add_argument("--out", default="third_party_suite", help="directory for the suites and outputs")
    parser.add_argument("--markdown", help="also write the per-case table to this file")
    parser.add_argument("--budget", type=float, default=300, help="seconds per implementation; later cases are skipped")
    args = parser.parse_args()
    missing = {impl: missing_packages(impl) for impl in args.impl}
    missing = {k: v for k, v in missing.items() if v}
    if missing:
        for impl, packages in missing.items():
            print("third_party_suite: --impl %s needs %s, which is not installed" % (impl, ", ".join(packages)),
                  file=sys.stderr)
        return 2
    reports, times = {}, {}
    for impl in args.impl:
        kernel = KERNELS[impl]()
        started = time.time()

        def timed(case, kernel=kernel, started=started):
            if time.time() - started > args.budget:
                raise TimeoutError("not run: the %g s budget was spent" % args.budget)
            return kernel(case)
        reports[impl] = rpa.testing.run_suite(timed, directory=os.path.join(args.out, impl))
        times[impl] = time.time() - started
        print(reports[impl])
    names = list(reports[args.impl[0]].cases)
    lines = ["| case | " + " | ".join(args.impl) + " |", "| --- |" + " --- |" * len(args.impl)]
    for name in names:
        cells = []
        for impl in args.impl:
            entry = reports[impl][name]
            if name in reports[impl].errors:
                last = reports[impl].errors[name].strip().splitlines()[-1]
                cells.append("not run (time budget)" if last.startswith("TimeoutError") else "error: " + last[:120])
            else:
                cells.append(entry["summary"].replace("|", "/"))
        lines.append("| %s | %s |" % (name, " | ".join(cells)))
    lines.append("| **passed** | " + " | ".join(
        "%d of %d (%.0f s)" % (len(names) - len(reports[i].failed), len(names), times[i]) for i in args.impl) + " |")
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
