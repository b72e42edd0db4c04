"""Strict loading of the AR-Seg release's state_dicts into our networks."""
import torch

from .bisenet import BiSeNet18
from .pspnet import PSPNet18

# Keys of the release that our forward never reads. PSPNet: the label-presence `classifier` (training only).
# BiSeNet: the aux heads (training only) and `feat_conv_out` / `final_conv`, second names of `conv_out.conv` /
# `conv_out.conv_out` (same shapes) that the forward does not go through.
_IGNORABLE_PREFIXES = {
    PSPNet18: ("classifier.",),
    BiSeNet18: ("conv_out16.", "conv_out32.", "feat_conv_out.", "final_conv."),
}
# BatchNorm's step counter does not affect the forward pass (momentum is fixed); older checkpoints lack it.
_OPTIONAL_SUFFIX = ".num_batches_tracked"


def _ignorable(net, key):
    for cls, prefixes in _IGNORABLE_PREFIXES.items():
        if isinstance(net, cls):
            return key.startswith(prefixes)
    return False


def strip_module_prefix(state_dict):
    """Remove the "module." prefix DataParallel/DistributedDataParallel put on every key (when all have it)."""
    keys = list(state_dict)
    if keys and all(k.startswith("module.") for k in keys):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def load_official_state_dict(net, state_dict, *, name="state_dict"):
    """Load a release state_dict into `net` (PSPNet18 / BiSeNet18, with or without CReFF).

    Every tensor of `net` must be present with the same shape (BatchNorm's num_batches_tracked may be absent);
    keys the net lacks are errors unless they are the release's training-only heads or output-head aliases
    (see _IGNORABLE_PREFIXES). Raises ValueError listing all missing, unexpected and mismatched keys.
    """
    if not isinstance(state_dict, dict) and not hasattr(state_dict, "items"):
        raise TypeError(f"{name} must be a mapping of parameter names to tensors, got {type(state_dict).__name__}")
    given = strip_module_prefix(state_dict)
    expected = net.state_dict()
    missing = [k for k in expected if k not in given and not k.endswith(_OPTIONAL_SUFFIX)]
    unexpected = [k for k in given if k not in expected and not _ignorable(net, k)]
    mismatched = []
    for key, target in expected.items():
        value = given.get(key)
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            mismatched.append(f"{key}: expected a tensor of shape {list(target.shape)}, got {type(value).__name__}")
        elif value.shape != target.shape:
            mismatched.append(f"{key}: checkpoint shape {list(value.shape)}, model shape {list(target.shape)}")
    if missing or unexpected or mismatched:
        lines = [f"{name} does not match {type(net).__name__}:"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", mismatched)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items))
        raise ValueError("\n".join(lines))
    net.load_state_dict({k: given[k] for k in expected if k in given}, strict=False)
    return net
