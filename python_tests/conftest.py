"""Shared pytest fixtures: every op test runs on CPU, and on CUDA when a GPU and a CUDA build are present."""
import pytest
import torch

from arseg_ops.testing import cuda_available, experimental_kernels, poison_outputs

HAS_CUDA = cuda_available()
_NO_CUDA_REASON = "needs a CUDA device and an arseg_ops build with CUDA kernels"

# Use as @pytest.mark.parametrize("device", DEVICES)
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason=_NO_CUDA_REASON)]),
]


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device (skipped without one)")


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture
def poison():
    """Fill every op output with NaN before its kernel writes it, so unwritten elements fail comparisons."""
    with poison_outputs():
        yield


def _kernel_set(request, name):
    names = (name,) if request.param == "experimental" else ()
    with experimental_kernels(*names):
        yield request.param


@pytest.fixture(params=["default", "experimental"])
def attn_kernels(request):
    """Run a local_attn test twice: with the verified kernels only (whatever ARSEG_EXPERIMENTAL_KERNELS says), and
    with the experimental local_attn kernels switched on (they fall back to the verified ones where they do not
    apply: CPU, float64, large K)."""
    yield from _kernel_set(request, "local_attn")


@pytest.fixture(params=["default", "experimental"])
def warp_kernels(request):
    """Run an mv_warp test with the verified kernels and with the opt-in v2 kernels (CUDA only; the CPU has one set
    of kernels and ignores the switch)."""
    yield from _kernel_set(request, "mv_warp")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_addoption(parser):
    parser.addoption("--run-large", action="store_true", default=False,
                     help="run the tests that allocate tensors of more than 2^31 elements")
