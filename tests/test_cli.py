"""``python -m convmixer_fast`` info and verify (inspect is tested in test_inspect.py)."""

import json
import math
import subprocess
import sys

import pytest
import torch

from convmixer_fast.__main__ import main


def test_info_runs_in_a_fresh_process():
    result = subprocess.run([sys.executable, "-m", "convmixer_fast", "info"], capture_output=True, text=True, check=True)
    assert "convmixer_fast 0.1.0" in result.stdout
    assert "backends on cpu:" in result.stdout and "eager   available" in result.stdout
    assert "_C " in result.stdout


@pytest.mark.parametrize("backend", ["eager", "triton"])
def test_verify_passes_and_reports_every_kernel(capsys, backend):
    pytest.importorskip("triton") if backend == "triton" else None
    code = main(["verify", "--config", "16,2,3,2,5", "--image-size", "9", "--backend", backend, "--dtype", "fp32", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["ok"] and len(report["runs"]) == 1
    rows = report["runs"][0]["rows"]
    assert [row["step"] for row in rows] == ["stem", "block 0 depthwise", "block 0 pointwise", "block 1 depthwise",
                                             "block 1 pointwise", "head", "eager backend logits vs fp32 reference",
                                             "model logits vs fp32 reference"]
    assert all(row["max_rel"] <= row["tolerance"] for row in rows)


def test_verify_default_image_size_holds_a_patch_of_any_config(capsys):
    """Without --image-size, a config whose patch is larger than 224 pixels runs on one patch."""
    code = main(["verify", "--config", "8,1,3,230", "--backend", "eager", "--dtype", "fp32", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["ok"] and report["runs"][0]["image_size"] == 230


def test_verify_runs_every_combination_and_an_unavailable_backend_fails_alone(capsys):
    code = main(["verify", "--config", "16,1,3,2,5", "--image-size", "8", "--device", "cpu",
                 "--backend", "eager", "cuda", "--dtype", "fp32", "bf16", "--json"])
    report = json.loads(capsys.readouterr().out)
    runs = {(run["backend"], run["dtype"]): run for run in report["runs"]}
    assert code == 1 and not report["ok"] and len(runs) == 4
    for dtype in ("torch.float32", "torch.bfloat16"):
        assert runs["eager", dtype]["ok"] and len(runs["eager", dtype]["rows"]) == 6
        assert not runs["cuda", dtype]["ok"] and "cannot run on cpu" in runs["cuda", dtype]["error"]


def test_verify_passes_in_fp16_for_a_deep_model_at_224_pixels(capsys):
    # verify's random weights are calibrated at the image size it runs: calibrated at 64 px, this
    # model's activations reached ~3e4 at 224 px, and ConvMixer-1536/20's overflowed fp16.
    code = main(["verify", "--config", "16,12,9,14", "--image-size", "224", "--backend", "eager", "--dtype", "fp16",
                 "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["ok"], report


def test_verify_fails_past_tolerance(capsys, monkeypatch):
    from convmixer_fast import verify

    monkeypatch.setitem(verify.MODEL_TOLERANCE, torch.bfloat16, 0.0)
    monkeypatch.setattr(verify, "EAGER_ERROR_FACTOR", 0.0)
    code = main(["verify", "--config", "16,1,3,2,5", "--image-size", "8", "--backend", "eager", "--dtype", "bf16"])
    out = capsys.readouterr().out
    assert code == 1 and "FAIL" in out


def test_verify_judges_the_model_by_the_eager_backends_error_in_its_dtype(capsys, monkeypatch):
    # Where PyTorch's own ops in bf16 are further from the fp32 logits than MODEL_TOLERANCE, the
    # model may be EAGER_ERROR_FACTOR times as far; both rows show that tolerance.
    from convmixer_fast import verify

    monkeypatch.setitem(verify.MODEL_TOLERANCE, torch.bfloat16, 1e-9)
    code = main(["verify", "--config", "16,2,3,2,5", "--image-size", "9", "--backend", "eager", "--dtype", "bf16",
                 "--json"])
    rows = json.loads(capsys.readouterr().out)["runs"][0]["rows"]
    eager, model = rows[-2], rows[-1]
    assert code == 0 and eager["step"] == "eager backend logits vs fp32 reference"
    assert eager["max_rel"] > 1e-4 and model["max_rel"] == eager["max_rel"]
    assert eager["tolerance"] == model["tolerance"] == pytest.approx(verify.EAGER_ERROR_FACTOR * eager["max_rel"])


@pytest.mark.parametrize("floor, eager_error, plain_error, expected", [
    (0.1, 0.01, 0.01, 0.1), (0.1, 0.05, 0.04, 0.15), (0.1, float("nan"), 0.04, 0.1), (0.1, 0.05, float("nan"), 0.15),
    (0.1, 0.5, 0.04, 0.24),  # a bug shared by the eager backend and the kernels: capped at 2x plain PyTorch's
])
def test_model_tolerance_is_the_floor_or_a_multiple_of_the_eager_error(monkeypatch, floor, eager_error, plain_error,
                                                                       expected):
    from convmixer_fast import verify

    monkeypatch.setattr(verify, "EAGER_ERROR_FACTOR", 3.0)
    monkeypatch.setattr(verify, "PLAIN_ERROR_CAP", 2.0)
    assert verify.model_tolerance(floor, eager_error, plain_error) == pytest.approx(expected)


def test_plain_pytorch_gives_no_cap_in_fp32_or_where_it_cannot_run():
    """In fp32 the plain copy is the reference itself (its error 0 would cap every tolerance to the
    floor); a reference that cannot run in the dtype is warned about, not blamed on the model."""
    from convmixer_fast import verify

    reference = torch.nn.Linear(4, 3)
    image = torch.randn(2, 4)
    logits = reference(image).detach()
    assert math.isnan(verify.plain_torch_error(reference, image, torch.float32, logits))
    assert 0 < verify.plain_torch_error(reference, image, torch.bfloat16, logits) < 0.1

    class Refusing(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("CUDA out of memory")

    with pytest.warns(UserWarning, match="plain PyTorch could not run the reference in torch.bfloat16"):
        assert math.isnan(verify.plain_torch_error(Refusing(), image, torch.bfloat16, logits))


def test_tolerances_of_tf32_apply_to_fp32_on_a_gpu_allowing_it():
    """TF32's 10 mantissa bits: a looser kernel tolerance, the model's compounding it; only where
    fp32 math may run in TF32 (a GPU with torch's flag), not on the CPU or in 16-bit dtypes."""
    from convmixer_fast import verify

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert verify.tolerances(torch.float32, cuda, tf32=True) == (verify.TF32_TOLERANCE, 10 * verify.TF32_TOLERANCE)
    fp32 = (verify.KERNEL_TOLERANCE[torch.float32], verify.MODEL_TOLERANCE[torch.float32])
    assert verify.tolerances(torch.float32, cuda, tf32=False) == verify.tolerances(torch.float32, cpu, tf32=True) == fp32
    assert fp32[0] < fp32[1] < verify.TF32_TOLERANCE
    bf16 = verify.tolerances(torch.bfloat16, cuda, tf32=True)
    assert bf16 == (verify.KERNEL_TOLERANCE[torch.bfloat16], verify.MODEL_TOLERANCE[torch.bfloat16])


@pytest.mark.parametrize("matmul, conv", [(False, False), (False, True), (True, False)])
def test_verify_holds_a_gpus_fp32_to_tf32s_tolerances_where_either_switch_is_on(gpu_tolerances, matmul, conv):
    """The references' convolutions follow cuDNN's switch (on by default), the kernels the matmul
    one: either may round to TF32. (The device is a GPU for the tolerances only.)"""
    from convmixer_fast import _tf32, verify

    _tf32._set(matmul, conv)
    config = dict(dim=16, depth=1, kernel_size=3, patch_size=2, n_classes=5)
    model, reference = verify.build_pair(config, torch.float32, torch.device("cpu"), image_size=9)
    rows = verify.verify_model(model, reference, torch.randn(2, 3, 9, 9), "eager")
    kernel = verify.TF32_TOLERANCE if matmul or conv else verify.KERNEL_TOLERANCE[torch.float32]
    assert [row.tolerance for row in rows[:-2]] == [kernel] * 4  # stem, depthwise, pointwise, head
    assert min(row.tolerance for row in rows[-2:]) >= (10 * verify.TF32_TOLERANCE if matmul or conv
                                                      else verify.MODEL_TOLERANCE[torch.float32])


def test_a_row_passes_up_to_its_tolerance_and_fails_on_nan():
    """Relative errors: scaled by the reference's largest magnitude; an exact result passes a zero
    tolerance; NaN anywhere fails."""
    from convmixer_fast import verify

    assert verify.errors(torch.tensor([110.0, -3.0]), torch.tensor([100.0, -3.0])) == (10.0, 0.1)
    assert verify.errors(torch.tensor([0.5]), torch.tensor([0.0])) == (0.5, 0.5)  # (an all-zero reference)
    assert verify.Row("head", 0.0, 0.0, 0.0).ok and verify.Row("head", 1.0, 0.1, 0.1).ok
    assert not verify.Row("head", 1.0, 0.11, 0.1).ok
    nan_row = verify._row("head", torch.tensor([1.0, math.nan]), torch.tensor([1.0, 2.0]), 1.0)
    assert math.isnan(nan_row.max_rel) and not nan_row.ok


@pytest.mark.parametrize("factor", [1 + 5e-4, math.nan])
def test_a_wrong_kernel_fails_its_own_row_alone(monkeypatch, factor):
    """A stem kernel 5e-4 off (relative) in fp32, far past fp32's rounding though within the
    model's tolerance of 1e-3, or giving NaN: its row fails, every other row passes (each kernel is
    fed the reference's output of the step before, so a row shows that kernel's own error)."""
    from convmixer_fast import verify

    resolve = verify.resolve_ops

    def stem_off(*args, **kwargs):
        resolved = resolve(*args, **kwargs)
        stem = resolved.ops.stem
        return resolved._replace(ops=resolved.ops._replace(stem=lambda *a, **k: stem(*a, **k) * factor))

    monkeypatch.setattr(verify, "resolve_ops", stem_off)
    config = dict(dim=16, depth=2, kernel_size=3, patch_size=2, n_classes=5)
    model, reference = verify.build_pair(config, torch.float32, torch.device("cpu"), image_size=9)
    rows = verify.verify_model(model, reference, torch.randn(2, 3, 9, 9), "eager")
    assert [row.step for row in rows if not row.ok] == ["stem"]
    if not math.isnan(factor):
        assert rows[0].max_rel == pytest.approx(factor - 1, rel=1e-2)


def test_a_bug_the_eager_backend_shares_with_the_kernels_is_caught(monkeypatch):
    """Every depthwise BatchNorm scale 10% too large in bf16 only (the eager backend and the kernels
    share ``prepare_params``): the eager backend's error grows with the bug, the yardstick must not."""
    from convmixer_fast import model as model_module

    prepare = model_module.prepare_params

    def wrong_in_bf16(model, dtype=None):
        params = prepare(model, dtype)
        if (dtype or model.stem[0].weight.dtype) == torch.bfloat16:
            for block in params.blocks:
                block.depthwise.epilogue.scale.mul_(1.1)
        return params

    monkeypatch.setattr(model_module, "prepare_params", wrong_in_bf16)
    assert main(["verify", "--model", "convmixer_cifar10", "--backend", "eager", "--dtype", "bf16", "--device", "cpu"]) == 1


@pytest.mark.parametrize("argv, message", [
    (["verify", "--batch", "0"], "argument --batch: expected an integer >= 1, got 0"),
    (["verify", "--config", "16,x,3,2"], "argument --config: expected DIM,DEPTH,KERNEL,PATCH[,CLASSES] as integers"),
    (["verify", "--config", "16,1,3"], "argument --config: expected DIM,DEPTH,KERNEL,PATCH"),
    (["verify", "--config", "0,1,3,2"], "argument --config: '0,1,3,2': dim must be an integer >= 1, got 0"),
    (["verify", "--config", "16,1,33,2"], "kernel_size must be an integer in [1, 31], got 33"),
    (["verify", "--config", "16,1,3,2,0"], "CLASSES must be >= 1: verify and bench compare logits"),
    (["verify", "--device", "foo"], "argument --device: not a device name: 'foo'"),
    (["verify", "--device", "meta"], "argument --device: meta tensors hold no values"),
    (["verify", "--device", "xpu"], "verify: --device xpu cannot be used here: "),
    (["verify", "--model", "convmixer_768_32", "--image-size", "6"],
     "verify: image size 6 is smaller than convmixer_768_32's patch size 7"),
    (["verify", "--config", "16,1,3,4", "--image-size", "3"], "image size 3 is smaller than config 16,1,3,4"),
    (["bench", "--batch", "2", "-1"], "argument --batch: expected an integer >= 1, got -1"),
    (["bench", "--repeats", "0"], "argument --repeats: expected an integer >= 1, got 0"),
    (["bench", "--warmup", "-1"], "argument --warmup: expected an integer >= 0, got -1"),
    (["bench", "--max-regression", "nan"], "argument --max-regression: expected a number >= 0, got nan"),
    (["bench", "--device", "cpu", "--image-size", "1"], "bench: image size 1 is smaller than convmixer_cifar10's"),
    (["bench", "--targets", __file__], "bench: " + __file__ + ": not a JSON file"),
    (["bench-ops", "--batch", "0"], "argument --batch: expected an integer >= 1, got 0"),
    (["bench-ops", "--device", "cpu", "--image-size", "1"], "bench-ops: image size 1 is smaller than"),
    (["inspect", "--arch", "sm_75"], "argument --arch: invalid choice: 'sm_75'"),
    (["tune-gemm", "--device", "meta"], "argument --device: meta tensors hold no values"),
])
def test_bad_arguments_exit_2_saying_what_was_expected(capsys, argv, message):
    """A usage error, no traceback, and nothing run (each of these would have crashed or measured
    nothing)."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's errors
        code = exit_.code
    captured = capsys.readouterr()
    assert code == 2 and message in captured.err, captured.err
    assert "Traceback" not in captured.err and captured.out == ""


@pytest.mark.parametrize("variable", ["CONVMIXER_FAST_AUTO_MEASURE", "CONVMIXER_FAST_TRITON_AUTOTUNE"])
def test_a_malformed_switch_is_a_usage_error(capsys, monkeypatch, variable):
    monkeypatch.setenv(variable, "maybe")
    with pytest.raises(SystemExit) as exit_:
        main(["verify", "--config", "16,1,3,2", "--device", "cpu"])
    captured = capsys.readouterr()
    assert exit_.value.code == 2 and f"{variable}: expected 0 or 1" in captured.err and "'maybe'" in captured.err
    assert "Traceback" not in captured.err and captured.out == ""


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 58.00 GiB"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: ..."),
    MemoryError(),
])
def test_out_of_memory_exits_2_naming_the_allocation(capsys, monkeypatch, error):
    """A batch, image or config too large for the device: one line saying so, not a traceback;
    other errors still raise."""
    from convmixer_fast import verify

    def build_pair(*args, **kwargs):
        raise error

    monkeypatch.setattr(verify, "build_pair", build_pair)
    assert main(["verify", "--config", "16,1,3,2", "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("python -m convmixer_fast verify: out of memory: ")
    assert (str(error) or "MemoryError").splitlines()[0] in captured.err and "Traceback" not in captured.err
    monkeypatch.setattr(verify, "build_pair", lambda *args, **kwargs: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(["verify", "--config", "16,1,3,2", "--device", "cpu"])


@pytest.mark.parametrize("command", ["verify", "bench", "bench-ops", "tune-gemm"])
def test_a_missing_gpu_is_a_usage_error(capsys, command):
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert main([command, "--device", f"cuda:{count}"]) == 2
    said = f"sees {count} CUDA GPU(s): cuda:0 to cuda:{count - 1}" if count else "sees no CUDA GPU"
    assert f"{command}: --device cuda:{count}, but torch {said}" in capsys.readouterr().err
