"""Roofline: the compulsory DRAM traffic of a kernel case divided by the device's bandwidth.

The traffic formulas live with the ops (arseg_ops/_opinfo.py); this module applies them to benchmark cases.
"""
import math

from .._opinfo import local_attn_traffic, mv_warp_traffic
from .cases import DTYPES

PEAK_BANDWIDTH = 3.0e12  # bytes/s: about what an H100 (HBM3) reaches in a device-to-device copy


def min_traffic_bytes(case):
    """Compulsory DRAM traffic of local_attn / mv_warp cases (each input read once, each output written once)."""
    e = _element_size(case.dtype)
    shape = (case.batch, case.channels) + tuple(case.size)
    if case.op == "local_attn":
        return local_attn_traffic(shape, case.channels, e, case.pass_)
    if case.op == "mv_warp":
        mv_shape = (case.batch, 2, math.ceil(case.size[0] / case.block), math.ceil(case.size[1] / case.block))
        return mv_warp_traffic(shape, mv_shape, e, case.pass_)
    return None


def _element_size(dtype_name):
    """Bytes per element of a dtype name (torch dtypes know their own size)."""
    return DTYPES[dtype_name].itemsize


def roofline_seconds(case, bandwidth=PEAK_BANDWIDTH):
    traffic = min_traffic_bytes(case)
    return None if traffic is None else traffic / bandwidth
