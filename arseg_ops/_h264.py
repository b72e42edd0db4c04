"""Just enough H.264 bitstream parsing to read the sequence parameter set (SPS) from a stream's extradata.

arseg_ops.video needs `max_num_ref_frames`: FFmpeg's exported motion vectors only say "past" or "future"
(AVMotionVector.source = -1 / +1), not which reference picture they point into, so with more than one
reference frame the per-frame motion cannot be chained back to the keyframe reliably.

Layout (ITU-T H.264, 7.3.2.1.1): the SPS is a NAL unit of type 7. In MP4/MKV it sits in the `avcC` record
(ISO/IEC 14496-15, 5.3.3.1); in raw (Annex B) streams it follows a 00 00 01 start code. Inside a NAL unit the
encoder inserts an emulation-prevention byte 03 after every 00 00 that would otherwise be followed by 00..03;
those bytes must be removed before reading the exp-Golomb coded fields.
"""
from dataclasses import dataclass

NAL_SPS = 7

# profile_idc values whose SPS carries chroma_format_idc, bit depths and scaling matrices (7.3.2.1.1).
_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


@dataclass(frozen=True)
class SequenceParameterSet:
    profile_idc: int
    level_idc: int
    pic_order_cnt_type: int
    max_num_ref_frames: int


class _BitReader:
    """MSB-first bit reader with the exp-Golomb codes of H.264 (9.1)."""

    def __init__(self, data: bytes):
        self._data = data
        self._pos = 0  # in bits

    def bit(self) -> int:
        byte = self._pos >> 3
        if byte >= len(self._data):
            raise ValueError("SPS ended early")
        value = (self._data[byte] >> (7 - (self._pos & 7))) & 1
        self._pos += 1
        return value

    def bits(self, n: int) -> int:
        value = 0
        for _ in range(n):
            value = (value << 1) | self.bit()
        return value

    def ue(self) -> int:
        leading_zeros = 0
        while self.bit() == 0:
            leading_zeros += 1
            if leading_zeros > 31:
                raise ValueError("invalid exp-Golomb code in SPS")
        return (1 << leading_zeros) - 1 + self.bits(leading_zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


def remove_emulation_prevention(nal: bytes) -> bytes:
    """Drop each 0x03 that follows two zero bytes (the raw byte sequence payload, 7.4.1)."""
    out = bytearray()
    zeros = 0
    for b in nal:
        if zeros >= 2 and b == 3:
            zeros = 0
            continue
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


def _skip_scaling_list(r: _BitReader, size: int) -> None:
    last_scale = next_scale = 8
    for _ in range(size):
        if next_scale != 0:
            next_scale = (last_scale + r.se() + 256) % 256
        last_scale = last_scale if next_scale == 0 else next_scale


def parse_sps(nal: bytes) -> SequenceParameterSet:
    """Parse an SPS NAL unit (with its one-byte NAL header, emulation prevention still in place)."""
    if not nal or nal[0] & 0x1F != NAL_SPS:
        raise ValueError("not an SPS NAL unit")
    r = _BitReader(remove_emulation_prevention(nal[1:]))
    profile_idc = r.bits(8)
    r.bits(8)  # constraint flags and reserved bits
    level_idc = r.bits(8)
    r.ue()  # seq_parameter_set_id
    if profile_idc in _HIGH_PROFILES:
        chroma_format_idc = r.ue()
        if chroma_format_idc == 3:
            r.bit()  # separate_colour_plane_flag
        r.ue()  # bit_depth_luma_minus8
        r.ue()  # bit_depth_chroma_minus8
        r.bit()  # qpprime_y_zero_transform_bypass_flag
        if r.bit():  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format_idc != 3 else 12):
                if r.bit():
                    _skip_scaling_list(r, 16 if i < 6 else 64)
    r.ue()  # log2_max_frame_num_minus4
    pic_order_cnt_type = r.ue()
    if pic_order_cnt_type == 0:
        r.ue()  # log2_max_pic_order_cnt_lsb_minus4
    elif pic_order_cnt_type == 1:
        r.bit()  # delta_pic_order_always_zero_flag
        r.se()  # offset_for_non_ref_pic
        r.se()  # offset_for_top_to_bottom_field
        for _ in range(r.ue()):  # num_ref_frames_in_pic_order_cnt_cycle
            r.se()
    max_num_ref_frames = r.ue()
    return SequenceParameterSet(profile_idc, level_idc, pic_order_cnt_type, max_num_ref_frames)


def _annexb_nal_units(data: bytes):
    """Split an Annex B byte stream at its 00 00 01 start codes (a 4-byte 00 00 00 01 leaves a trailing 0)."""
    starts = []
    i = data.find(b"\x00\x00\x01")
    while i >= 0:
        starts.append(i + 3)
        i = data.find(b"\x00\x00\x01", i + 3)
    for k, s in enumerate(starts):
        end = starts[k + 1] - 3 if k + 1 < len(starts) else len(data)
        yield data[s:end].rstrip(b"\x00")


def _avcc_sps_units(data: bytes):
    """SPS NAL units of an avcC record: version, profile, compat, level, length size, then counted SPS list."""
    count = data[5] & 0x1F
    pos = 6
    for _ in range(count):
        size = int.from_bytes(data[pos : pos + 2], "big")
        yield data[pos + 2 : pos + 2 + size]
        pos += 2 + size


def sps_from_extradata(extradata: bytes | None) -> SequenceParameterSet | None:
    """The first SPS in `extradata` (avcC or Annex B), or None if there is none or it cannot be parsed."""
    if not extradata or len(extradata) < 7:
        return None
    try:
        if extradata[0] == 1:  # avcC: configurationVersion is always 1, an Annex B stream starts with 0
            units = _avcc_sps_units(extradata)
        else:
            units = _annexb_nal_units(extradata)
        for nal in units:
            if nal and nal[0] & 0x1F == NAL_SPS:
                return parse_sps(nal)
    except (ValueError, IndexError):
        return None
    return None
