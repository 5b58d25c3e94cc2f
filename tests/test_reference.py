"""The reference model is the architecture of DESIGN.md §1 (checked against a functional rewrite)."""

import pytest
import torch
import torch.nn.functional as F

from convmixer_fast.ops import reference as op_reference
from convmixer_fast.reference import ConvMixerReference
from convmixer_fast.verify import build_reference
from helpers import reference_model

ACT = {"gelu": F.gelu, "relu": F.relu}


def bn(x, module):
    return (x - module.running_mean[:, None, None]) / torch.sqrt(module.running_var[:, None, None] + module.eps) \
        * module.weight[:, None, None] + module.bias[:, None, None]


def functional_convmixer(model, x, k, p, act):
    """DESIGN.md §1 from its text: conv -> act -> BN; residual around the depthwise part only;
    'same' padding = (k-1)//2 before and k//2 after; input floored to whole patches."""
    depth = len(model) - 6
    stem_conv, stem_bn = model[0], model[2]
    H, W = x.shape[2] // p * p, x.shape[3] // p * p
    x = bn(ACT[act](F.conv2d(x[:, :, :H, :W], stem_conv.weight, stem_conv.bias, stride=p)), stem_bn)
    before, after = (k - 1) // 2, k // 2
    for j in range(depth):
        block = model[3 + j]
        dw, dw_bn = block[0].fn[0], block[0].fn[2]
        padded = F.pad(x, (before, after, before, after))
        x = x + bn(ACT[act](F.conv2d(padded, dw.weight, dw.bias, groups=x.shape[1])), dw_bn)
        x = bn(ACT[act](F.conv2d(x, block[1].weight, block[1].bias)), block[3])
    head = model[5 + depth]
    return x.mean((2, 3)) @ head.weight.T + head.bias


@pytest.mark.parametrize("act", ["gelu", "relu"])
@pytest.mark.parametrize("k, p, size", [(3, 2, (9, 11)), (4, 3, (16, 14)), (5, 4, (13, 13)), (6, 2, (7, 10)), (1, 5, (11, 16))])
def test_reference_matches_design(k, p, size, act):
    model = reference_model(12, 2, k, p, 5, act=act, seed=k)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        torch.testing.assert_close(model(x), functional_convmixer(model, x, k, p, act), rtol=1e-4, atol=1e-5)


def test_reference_state_dict_keys_are_the_original_ones():
    keys = list(ConvMixerReference(8, 2, 3, 2, 4).state_dict())
    assert keys[:2] == ["0.weight", "0.bias"]
    assert "2.running_var" in keys and "3.0.fn.0.weight" in keys and "3.0.fn.2.running_mean" in keys
    assert "4.1.weight" in keys and "4.3.num_batches_tracked" in keys
    assert keys[-2:] == ["7.weight", "7.bias"]  # head at 5 + depth


@pytest.mark.parametrize("dim, depth, k, p", [(32, 20, 9, 7), (16, 12, 9, 14)])
def test_random_weights_keep_the_residual_stream_bounded_at_their_image_size(dim, depth, k, p):
    # Calibrated on 64 px images and run at 224, these models' last blocks reached ~2e3 and ~3e4
    # (the statistics of smaller token maps under-estimate the variances: testing.py).
    model = build_reference({"dim": dim, "depth": depth, "kernel_size": k, "patch_size": p, "n_classes": 10},
                            torch.device("cpu"), image_size=224, seed=3)
    x = torch.randn(2, 3, 224, 224)
    peaks = []
    with torch.no_grad():
        for layer in model:
            x = layer(x)
            peaks.append(x.abs().max().item())
    stem, blocks = peaks[2], peaks[3:3 + depth]
    assert max(blocks) < 4 * stem, (stem, blocks)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("act", ["gelu", "relu"])
def test_op_references_leave_their_operands_untouched(dtype, act):
    """The op references (the eager backend) compute their epilogues in place: of their own fp32
    accumulators only, never of an operand (an fp32 ``x.float()`` is ``x`` itself); each returns a
    fresh contiguous tensor in the operands' dtype."""
    torch.manual_seed(0)
    B, H, W, C, k, p = 2, 7, 5, 12, 3, 2
    x = torch.randn(B, H, W, C).to(dtype)
    image = torch.randn(B, 3, H * p + 1, W * p)
    epilogue = (torch.randn(C), torch.rand(C) + 0.5, torch.randn(C))
    calls = {
        "stem": (op_reference.stem_reference, (image, torch.randn(C, 3, p, p).to(dtype), *epilogue, act)),
        "depthwise_block": (op_reference.depthwise_block_reference, (x, torch.randn(k, k, C).to(dtype), *epilogue, act)),
        "pointwise": (op_reference.pointwise_reference, (x, torch.randn(C, C).to(dtype), *epilogue, act)),
        "head": (op_reference.head_reference, (x, torch.randn(10, C).to(dtype), epilogue[0][:10])),
    }
    for name, (fn, args) in calls.items():
        before = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
        out = fn(*args)
        for arg, kept in zip(args, before):
            if isinstance(arg, torch.Tensor):
                assert torch.equal(arg, kept), name
                assert out.data_ptr() != arg.data_ptr(), name
        assert out.dtype == dtype and out.is_contiguous(), name


@pytest.mark.parametrize("lead", [(2, 3), (4,), ()], ids=["tokens-2x3", "tokens-4", "one-token"])
def test_pointwise_reference_without_input_channels_is_its_epilogue_of_the_bias(lead):
    """K = 0 (which the ops' checks accept, and the Triton kernel computes): an empty sum, so every
    token's output is ``scale * act(bias) + shift``; also for a 1-D ``y`` (one token)."""
    N = 5
    bias, scale, shift = torch.randn(N), torch.rand(N) + 0.5, torch.randn(N)
    out = op_reference.pointwise_reference(torch.empty(*lead, 0), torch.empty(N, 0), bias, scale, shift, "gelu")
    torch.testing.assert_close(out, (scale * F.gelu(bias) + shift).expand(*lead, N))
