"""Roofline: the compulsory DRAM traffic of a kernel case divided by the device's bandwidth.

The traffic formulas live with the ops (arseg_ops/_opinfo.py); this module applies them to benchmark cases.
"""
import math
import time

import torch

from .._opinfo import local_attn_traffic, mv_warp_traffic
from .cases import DTYPES

PEAK_BANDWIDTH = 3.0e12  # bytes/s: about what an H100 (HBM3) reaches in a device-to-device copy

# Peak bandwidth per device type for "% of roofline":
#   cuda  PEAK_BANDWIDTH, the H100's measured copy bandwidth (an H200 copies ~4.3 TB/s: percentages read high there)
#   cpu   measured once per process: a 256 MB tensor copy (read + write bytes / time), best of 3, because CPUs
#         and their memory differ too much for one constant (and a shared machine lowers it: say so with numbers)
_COPY_BYTES = 256 << 20
_measured = {}


def peak_bandwidth(device):
    """Bytes/s that the roofline of a case on `device` ("cpu" or "cuda[:i]") divides by."""
    if str(device).startswith("cuda"):
        return PEAK_BANDWIDTH
    if "cpu" not in _measured:
        src = torch.ones(_COPY_BYTES // 4)
        dst = torch.empty_like(src)
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            dst.copy_(src)
            best = min(best, time.perf_counter() - t0)
        _measured["cpu"] = 2 * _COPY_BYTES / best
    return _measured["cpu"]


def min_traffic_bytes(case):
    """Compulsory DRAM traffic of local_attn / mv_warp cases (each input read once, each output written once)."""
    e = _element_size(case.dtype)
    shape = (case.batch, case.channels) + tuple(case.size)
    if case.op == "local_attn" and case.impl == "flex_layout":
        return None  # a layout conversion, not the op
    if case.op == "local_attn":
        return local_attn_traffic(shape, case.channels, e, case.pass_)
    if case.op == "mv_warp":
        mv_shape = (case.batch, 2, math.ceil(case.size[0] / case.block), math.ceil(case.size[1] / case.block))
        return mv_warp_traffic(shape, mv_shape, e, case.pass_)
    return None


def _element_size(dtype_name):
    """Bytes per element of a dtype name (torch dtypes know their own size)."""
    return DTYPES[dtype_name].itemsize


def roofline_seconds(case, bandwidth=None):
    """Compulsory traffic / bandwidth (default: peak_bandwidth(case.device)); None for cases without a roofline."""
    traffic = min_traffic_bytes(case)
    if traffic is None:
        return None
    return traffic / (peak_bandwidth(case.device) if bandwidth is None else bandwidth)
