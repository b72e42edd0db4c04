"""Confusion matrix and mean intersection-over-union with an ignore label (void = 255)."""
import torch

from .manifest import IGNORE_INDEX


def confusion_matrix(pred, target, num_classes, *, ignore_index=IGNORE_INDEX):
    """int64 (num_classes, num_classes) counts, rows = true class, columns = predicted class; pixels whose
    target is ignore_index are skipped. Raises ValueError for target ids outside 0..num_classes-1."""
    pred, target = torch.as_tensor(pred), torch.as_tensor(target)
    if pred.shape != target.shape:
        raise ValueError(f"confusion_matrix: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    pred, target = pred.reshape(-1).long().cpu(), target.reshape(-1).long().cpu()
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    bad = (target < 0) | (target >= num_classes)
    if bad.any():
        raise ValueError(f"confusion_matrix: target has class ids {sorted(set(target[bad].tolist()))[:10]} outside "
                         f"0..{num_classes - 1} (and not the ignore index {ignore_index})")
    if ((pred < 0) | (pred >= num_classes)).any():
        raise ValueError(f"confusion_matrix: pred has class ids outside 0..{num_classes - 1}")
    return torch.bincount(target * num_classes + pred, minlength=num_classes ** 2).view(num_classes, num_classes)


def iou_per_class(cm):
    """IoU = TP / (TP + FP + FN) per class; NaN for classes absent from both target and prediction."""
    cm = torch.as_tensor(cm, dtype=torch.float64)
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


def mean_iou(cm):
    """Mean IoU over the classes that occur in the target, as a float in [0, 1]. A class only ever predicted
    (e.g. the void output of a 12-class CamVid network) still lowers the IoU of the classes it was confused
    with, but is not averaged in."""
    iou = iou_per_class(cm)
    present = torch.as_tensor(cm).sum(1) > 0
    return float(iou[present].mean()) if present.any() else float("nan")
