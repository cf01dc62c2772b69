"""The CUDA-event timing of bench/frameworks.py and bench/prefill_sweep.py (torch on a CUDA GPU)."""

import statistics

import torch


def ms_per_call(fn, calls, groups, warmup):
    """fn's time per call in ms: the median over `groups` groups of `calls` back-to-back calls, each group
    timed with CUDA events around it, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(groups):
        start.record()
        for _ in range(calls):
            fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / calls)
    return statistics.median(times)
