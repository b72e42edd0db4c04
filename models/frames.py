"""Where a non-keyframe's two inputs come from: the LR image size and the keyframe's HR feature warped to the frame.

Motion-vector convention. `mv_to_key` (N, 2, Hb, Wb) is in image pixels on a block grid: image pixel p of the
current frame corresponds to p + mv in the keyframe. The cached HR feature has its own grid (PSPNet-18: stride
1, i.e. the image size when H, W are multiples of 8; BiSeNet-18: 1/8). Subsampling the image by f = H / H_feat,
a feature pixel centre x_f lies at image coordinate (x_f + 0.5) * f - 0.5, so an image displacement d is d / f
feature pixels; we call `arseg_ops.mv_warp(feature, mv, scale=(W_feat / W, H_feat / H))`, whose block lookup
floor(y * Hb / H_feat) maps the motion grid proportionally onto the feature grid. Zero motion = identity warp.
"""
import arseg_ops


def lr_size(size, scale):
    """The LR network's input size: (int(H*scale), int(W*scale)), as the release."""
    return int(size[0] * scale), int(size[1] * scale)


def motion_scale(feature_size, image_size):
    """(sx, sy) turning image-pixel motion into feature-pixel motion (see the module doc)."""
    return feature_size[1] / image_size[1], feature_size[0] / image_size[0]


def warp_to_frame(hr_feature, mv_to_key, image_size):
    """Warp the keyframe's HR feature to the current frame; `mv_to_key` in image pixels (see module doc)."""
    return arseg_ops.mv_warp(hr_feature, mv_to_key, scale=motion_scale(hr_feature.shape[-2:], image_size))
