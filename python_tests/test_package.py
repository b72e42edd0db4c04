"""Package-level behaviour: build information, version guard, registration of the ops."""
import pytest
import torch

import arseg_ops
from arseg_ops import _loader


def test_build_info():
    info = arseg_ops.build_info()
    assert set(info) >= {"backends", "cuda", "cuda_archs", "cuda_version", "torch_version", "debug",
                         "experimental_kernels"}
    assert "cpu" in info["backends"]
    assert info["torch_version"] == torch.__version__
    assert info["cuda"] == ("cuda" in info["backends"])
    if not info["cuda"]:
        assert info["cuda_archs"] == [] and info["cuda_version"] is None


def test_version_guard_names_both_versions():
    _loader.check_torch_version("2.13.0", "2.13.0")
    with pytest.raises(ImportError, match=r"built against torch 2\.11\.0 but torch 2\.13\.0 is installed.*rebuild"):
        _loader.check_torch_version("2.11.0", "2.13.0")


def test_ops_registered():
    for name in ("mv_warp", "mv_warp_backward_feature", "mv_warp_backward_mv", "local_attn", "local_attn_backward"):
        assert hasattr(torch.ops.arseg_ops, name)
    assert torch.ops.arseg_ops.mv_warp.default._schema.arguments[0].name == "feature"


def test_poisoning_is_visible():
    """The test-only poison switch can be turned on and off, and fully written outputs stay NaN-free under it."""
    with _loader.poison_outputs():
        out = arseg_ops.local_attn(torch.randn(1, 1, 2, 2), torch.randn(1, 1, 2, 2), torch.randn(1, 1, 2, 2), 1)
    assert torch.isfinite(out).all()
    assert _loader.load_library()._set_poison_outputs(False) is False


def test_experimental_kernels_switch_is_scoped_and_validated():
    from arseg_ops._loader import experimental_kernels

    before = arseg_ops.build_info()["experimental_kernels"]
    with experimental_kernels("local_attn", "creff"):
        assert arseg_ops.build_info()["experimental_kernels"] == "local_attn,creff"
        with experimental_kernels("all"):
            assert arseg_ops.build_info()["experimental_kernels"] == "all"
        assert arseg_ops.build_info()["experimental_kernels"] == "local_attn,creff"
    assert arseg_ops.build_info()["experimental_kernels"] == before
    with pytest.raises(ValueError, match="experimental_kernels"):
        experimental_kernels("a,b")
