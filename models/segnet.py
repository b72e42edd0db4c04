"""Common interface of the segmentation networks: a feature at the fusion point, then a classifier.

Every network splits into `_backbone(x) -> (feature, aux_inputs)` (the feature AR-Seg warps and fuses) and
`classify(feature, out_size)`. Subclasses that carry a CReFF module (`fuse_attention`, the release's LR
networks) fuse a warped HR feature in between. Training-only heads (`aux_heads=True`) are built only on request
so that a plain network has no parameters its forward leaves unused (DistributedDataParallel needs that).
"""
import torch.nn as nn

from .creff import CReFF


class SegNet(nn.Module):
    feature_channels = None  # channels of the fusion-point feature, set by subclasses

    def __init__(self, num_classes, aux_heads):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        self.aux_heads = bool(aux_heads)
        self.fuse_attention = None

    def _add_creff(self, kernel_size, fused=True, position_bias=False):
        self.fuse_attention = CReFF(self.feature_channels, kernel_size, fused=fused, position_bias=position_bias)

    # -- implemented by subclasses --
    def _backbone(self, x):
        raise NotImplementedError

    def classify(self, feature, out_size=None):
        raise NotImplementedError

    def _aux_outputs(self, aux_inputs, out_size):
        raise NotImplementedError

    # -- shared --
    def features(self, x):
        """The fusion-point feature of image batch x (N, 3, H, W)."""
        return self._backbone(x)[0]

    def forward(self, x, hr_feature=None, *, mv=None, mv_scale=1.0, out_size=None, return_feature=False,
                return_aux=False):
        """x (N,3,h,w) -> output (log-probabilities for PSPNet, logits for BiSeNet, as the release).

        hr_feature: the warped HR feature, or with `mv` the keyframe's HR feature and the motion to warp it by
        (mv_warp scale `mv_scale`); only for networks with CReFF, which then fuse it into x's feature (CReFF's
        output has the HR feature's size). out_size: output resolution (default: x's size without
        fusion, the classifier's natural size with fusion). return_feature adds the (fused) feature that feeds
        the classifier; return_aux adds a dict of the training-only heads' outputs (needs aux_heads=True).
        Returns output, or a tuple (output, [feature], [aux]) in that order.
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{type(self).__name__}: x must be (N, 3, H, W), got {tuple(x.shape)}")
        if return_aux and not self.aux_heads:
            raise ValueError(f"{type(self).__name__}: return_aux=True needs a network built with aux_heads=True")
        feature, aux_inputs = self._backbone(x)
        if hr_feature is not None:
            if self.fuse_attention is None:
                raise ValueError(f"{type(self).__name__} has no CReFF module: hr_feature must be None")
            feature = self.fuse_attention(hr_feature, feature, mv, mv_scale=mv_scale)
        elif out_size is None:
            out_size = x.shape[-2:]
        out = self.classify(feature, out_size)
        if not (return_feature or return_aux):
            return out
        result = (out,)
        if return_feature:
            result += (feature,)
        if return_aux:
            result += (self._aux_outputs(aux_inputs, x.shape[-2:]),)
        return result
