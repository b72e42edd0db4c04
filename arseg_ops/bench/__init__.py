"""Measurement core of `arseg bench` and the pytest-benchmark suite in benchmarks/ (a tool: it builds on models).

    cases     Case (what to measure) and build(case) (a callable on freshly made inputs); GOP averages
    timing    time_call / time_interleaved, summarize_times (median, IQR, min, max)
    memory    MemoryProbe: peak extra memory (CUDA allocator, or a worker process's peak RSS on CPU)
    roofline  compulsory traffic / bandwidth, from the op metadata in arseg_ops/_opinfo.py
    peers     FlexAttention (analytic neighbourhood block mask) and torch.compile(reference) for local_attn
"""
from .cases import (ALL_PASSES, ARSEG_STEPS, DTYPES, LOCAL_ATTN_PEERS, PASSES, Case, build, dense_flow_grid_sample,
                    gop_average_over_keyframe, parse_size, parse_image_sizes, PAPER_IMAGE_SIZES)
from .memory import MemoryProbe, available_bytes, cuda_peak_extra_bytes, estimate_peak_bytes, too_big_reason
from .roofline import PEAK_BANDWIDTH, min_traffic_bytes, peak_bandwidth, roofline_seconds
from .timing import is_noisy, summarize_times, synchronize, time_call, time_interleaved

__all__ = [
    "ALL_PASSES", "ARSEG_STEPS", "DTYPES", "LOCAL_ATTN_PEERS", "PASSES", "Case", "build", "dense_flow_grid_sample",
    "gop_average_over_keyframe", "parse_size", "parse_image_sizes", "PAPER_IMAGE_SIZES", "MemoryProbe", "available_bytes", "cuda_peak_extra_bytes",
    "estimate_peak_bytes", "too_big_reason", "PEAK_BANDWIDTH", "peak_bandwidth", "min_traffic_bytes",
    "roofline_seconds", "is_noisy", "summarize_times", "synchronize", "time_call", "time_interleaved",
]
