"""The cuda backend's torch glue (csrc/cuda_ops.cpp, backends/cuda.py) where it runs without a GPU:
the C++ argument checks of every convmixer_fast::cuda_* op, the error a CPU tensor gets, the fake
implementations, and how the backend reports itself unavailable. (The kernels themselves are held to
the references in test_ops_*.py and test_kernel_model.py, on a GPU.)"""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import convmixer_fast as cf
from convmixer_fast._extension import extension_status
from convmixer_fast.backends import BACKENDS

status = extension_status()
if not status.loaded:
    pytest.skip(f"convmixer_fast._C is not built: {status.detail}", allow_module_level=True)

ops = torch.ops.convmixer_fast
F16, F32 = torch.float16, torch.float32


def _epilogue(channels):
    return [torch.zeros(channels), torch.ones(channels), torch.zeros(channels)]


def stem_args():
    return [torch.randn(1, 3, 8, 8), torch.randn(8, 3, 2, 2, dtype=F16), *_epilogue(8), "gelu",
            torch.empty(1, 4, 4, 8, dtype=F16)]


def depthwise_args():
    x = torch.randn(1, 4, 5, 6, dtype=F16)
    return [x, torch.randn(3, 3, 6, dtype=F16), *_epilogue(6), "relu", torch.empty_like(x), "auto"]


def pointwise_args():
    return [torch.randn(2, 3, 16, dtype=F16), torch.randn(8, 16, dtype=F16), *_epilogue(8), "gelu",
            torch.empty(2, 3, 8, dtype=F16)]


def head_args():
    return [torch.randn(2, 3, 3, 8, dtype=F16), torch.randn(5, 8, dtype=F16), torch.zeros(5), torch.empty(2, 8),
            torch.empty(2, 5, dtype=F16)]


OPS = {
    "stem": (ops.cuda_stem, stem_args),
    "depthwise_block": (ops.cuda_depthwise_block, depthwise_args),
    "pointwise": (ops.cuda_pointwise, pointwise_args),
    "head": (ops.cuda_head, head_args),
}

# (op, argument index, replacement(args) -> new value, error, message)
CASES = [
    ("stem", 0, lambda a: a[0].double(), TypeError, "stem: image must have a dtype in float32, float16, bfloat16, "
     "got torch.float64"),
    ("stem", 0, lambda a: a[0][0], ValueError, r"stem: image must be \[B, Cin, H, W\]"),
    ("stem", 1, lambda a: a[1][:, :2].contiguous(), ValueError, "weight must be .C, Cin, p, p. with Cin=3"),
    ("stem", 1, lambda a: a[1].transpose(2, 3), ValueError, "stem: weight must be contiguous"),
    ("stem", 0, lambda a: a[0][:, :, :1], ValueError, "H and W must be >= the patch size 2"),
    ("stem", 1, lambda a: torch.empty(8, 3, 0, 0, dtype=F16), ValueError, "square patches, p >= 1"),
    ("stem", 3, lambda a: a[3].half(), TypeError, "stem: scale must have dtype torch.float32, got torch.float16"),
    ("stem", 6, lambda a: torch.empty(1, 4, 4, 8), TypeError, "stem: out must have dtype torch.float16"),
    ("stem", 6, lambda a: torch.empty(1, 4, 4, 9, dtype=F16), ValueError, r"stem: out must have shape \[1, 4, 4, 8\]"),
    ("depthwise_block", 0, lambda a: a[0].int(), TypeError, "depthwise_block: x must have a dtype in"),
    ("depthwise_block", 0, lambda a: a[0].transpose(1, 2), ValueError, "x must be contiguous"),
    ("depthwise_block", 1, lambda a: a[1].float(), TypeError, "weight must have dtype torch.float16, got torch.float32"),
    ("depthwise_block", 1, lambda a: torch.zeros(32, 32, 6, dtype=F16), ValueError, "1 <= k <= 31"),
    ("depthwise_block", 2, lambda a: a[2][:5], ValueError, r"bias must have shape \[6\], got \[5\]"),
    ("depthwise_block", 5, lambda a: "silu", ValueError, r"act must be one of \('gelu', 'relu'\), got 'silu'"),
    ("depthwise_block", 6, lambda a: a[0], ValueError, "out must not overlap x"),
    ("depthwise_block", 7, lambda a: "winograd", ValueError,
     r"algorithm must be one of \('auto', 'direct', 'band'\), got 'winograd'"),
    ("pointwise", 1, lambda a: a[1][:, :8].contiguous(), ValueError, r"weight must be \[N, K\] with K=16"),
    ("pointwise", 6, lambda a: torch.empty(2, 3, 9, dtype=F16), ValueError, r"out must have shape \[2, 3, 8\]"),
    ("pointwise", 0, lambda a: torch.randn(97, dtype=F16)[1:].view(2, 3, 16), ValueError,
     "pointwise: y must start at a 16-byte aligned address"),
    ("pointwise", 6, lambda a: a[0].view(-1)[:48].view(2, 3, 8), ValueError, "pointwise: out must not overlap y"),
    ("pointwise", 0, lambda a: a[0][..., :0], ValueError, r"y must be \[\.\.\., K\] with K >= 1"),
    ("pointwise", 6, lambda a: a[1].view(-1)[:48].view(2, 3, 8), ValueError, "pointwise: out must not overlap weight"),
    ("head", 0, lambda a: a[0][:0], ValueError, "head: x must be non-empty"),
    ("head", 2, lambda a: a[2].double(), TypeError, "head: bias must have dtype torch.float32"),
    ("head", 3, lambda a: torch.empty(2, 9), ValueError, r"head: pooled must have shape \[2, 8\]"),
    ("head", 4, lambda a: torch.empty(2, 5), TypeError, "head: out must have dtype torch.float16"),
]


@pytest.mark.parametrize("op, index, replace, error, match", CASES, ids=[f"{c[0]}-{c[4][:40]}" for c in CASES])
def test_cpp_checks_reject_bad_arguments(op, index, replace, error, match):
    fn, make_args = OPS[op]
    args = make_args()
    args[index] = replace(args)
    with pytest.raises(error, match=match):
        fn(*args)


ARGUMENT_NAMES = {
    "stem": ("image", "weight", "bias", "scale", "shift", "act", "out"),
    "depthwise_block": ("x", "weight", "bias", "scale", "shift", "act", "out", "algorithm"),
    "pointwise": ("y", "weight", "bias", "scale", "shift", "act", "out"),
    "head": ("x", "weight", "bias", "pooled", "out"),
}
# (op, output, input): every pair the kernels need apart (other programs read the input while one
# writes the output)
APART = [(op, "out", tensor) for op in ("stem", "depthwise_block", "pointwise")
         for tensor in (ARGUMENT_NAMES[op][0], "weight", "bias", "scale", "shift")] + [
    ("head", "pooled", "x"), ("head", "pooled", "weight"), ("head", "pooled", "bias"),
    ("head", "out", "x"), ("head", "out", "pooled"), ("head", "out", "weight"), ("head", "out", "bias"),
]


@pytest.mark.parametrize("op, output, tensor", APART, ids=[f"{op}-{output}-{tensor}" for op, output, tensor in APART])
def test_an_output_over_any_input_is_refused(op, output, tensor):
    fn, make_args = OPS[op]
    args = make_args()
    names = ARGUMENT_NAMES[op]
    given, taken = args[names.index(tensor)], args[names.index(output)]
    storage = torch.zeros(max(given.nbytes, taken.nbytes), dtype=torch.uint8)  # both from its first byte
    args[names.index(tensor)] = storage[:given.nbytes].view(given.dtype).view(given.shape).copy_(given)
    args[names.index(output)] = storage[:taken.nbytes].view(taken.dtype).view(taken.shape)
    with pytest.raises(ValueError, match=f"{op}: {output} must not overlap {tensor}"):
        fn(*args)


@pytest.mark.parametrize("op", ["depthwise_block", "head"])
def test_an_image_of_2_31_elements_is_refused(op):
    """The kernels index one image with 32-bit ints. (4.3 GB of address space, never touched.)"""
    fn, make_args = OPS[op]
    args = make_args()
    args[0] = torch.empty(1, 46341, 46341, 1, dtype=F16)
    with pytest.raises(ValueError, match=f"{op}: one image must have fewer than 2\\*\\*31 elements"):
        fn(*args)


def test_stem_out_inside_a_strided_images_span_is_caught():
    """A cropped image spans more bytes than it holds: an ``out`` in its gaps' range still overlaps."""
    storage = torch.zeros(4096, dtype=F16)
    image = storage.as_strided((1, 3, 8, 8), (384, 128, 16, 1))  # rows of 8 in a pitch of 16
    out = storage[200:328].view(1, 4, 4, 8)  # past image.nbytes() from its start, inside its span
    args = stem_args()
    args[0], args[6] = image, out
    with pytest.raises(ValueError, match="stem: out must not overlap image"):
        ops.cuda_stem(*args)
    args[6] = torch.empty(1, 4, 4, 8, dtype=F16)  # its own storage: on to the device check
    with pytest.raises(ValueError, match="the cuda backend runs on CUDA tensors"):
        ops.cuda_stem(*args)


@pytest.mark.parametrize("op", OPS)
def test_valid_cpu_tensors_are_told_the_kernels_need_cuda(op):
    fn, make_args = OPS[op]
    with pytest.raises(ValueError, match=f"{op}: the cuda backend runs on CUDA tensors, got cpu"):
        fn(*make_args())


@pytest.mark.parametrize("op", OPS)
def test_fake_implementations(op):
    """torch.compile / torch.export trace the ops through their (Python) fake implementations."""
    fn, make_args = OPS[op]
    with FakeTensorMode(allow_non_fake_inputs=False) as mode:
        args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in make_args()]
        assert fn(*args) is None


def test_depthwise_algorithm_defaults_to_auto():
    """The backend's entry passes no algorithm: the schema's default ("auto") runs the checks and the
    fake alike."""
    args = depthwise_args()[:-1]
    with pytest.raises(ValueError, match="depthwise_block: the cuda backend runs on CUDA tensors, got cpu"):
        ops.cuda_depthwise_block(*args)
    with FakeTensorMode(allow_non_fake_inputs=False) as mode:
        assert ops.cuda_depthwise_block(*[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]) is None


def test_gemm_support_rule_without_cuda_kernels():
    if status.with_cuda:
        pytest.skip("this _C has its CUDA kernels")
    assert ops.cuda_pointwise_supported(torch.bfloat16, 1536, 1536, 9, 0) is False


@pytest.mark.parametrize("capability, runs", [((8, 9), True), ((9, 0), True), ((10, 0), False), ((12, 0), False)])
def test_backend_unavailable_on_a_gpu_its_kernels_were_not_built_for(monkeypatch, capability, runs):
    from convmixer_fast import _extension, backends

    built = _extension.ExtensionStatus(True, True, "CUDA 13.0, sm_80, sm_90a", ("80", "90a"))
    monkeypatch.setattr(backends, "extension_status", lambda: built)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    reason = BACKENDS["cuda"].unavailable_reason(torch.device("cuda", 0))
    if runs:
        assert reason is None
    else:
        assert reason == (f"its CUDA kernels were built for sm_80, sm_90a, which do not run on this GPU (compute "
                          f"capability {capability[0]}.{capability[1]}); rebuild with CONVMIXER_FAST_CUDA_ARCHS "
                          "naming it")


def test_backend_reports_why_it_cannot_run_on_cpu():
    assert BACKENDS["cuda"].unavailable_reason(torch.device("cpu")) == "the CUDA kernels run on CUDA GPUs, not on cpu"
    model = cf.ConvMixer(8, 1, 3, 2, 4, backend="cuda")
    with pytest.raises(cf.BackendUnavailableError, match="backend 'cuda' cannot run on cpu: the CUDA kernels run"):
        model(torch.randn(1, 3, 8, 8))
