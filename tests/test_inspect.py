"""``convmixer_fast.inspect``: every Triton kernel compiles for sm_90a / sm_80 without a GPU.

Needs Triton (its bundled ptxas and cuobjdump), no GPU and no interpreter. Works whether or not
TRITON_INTERPRET=1 is set for the session: ``inspect_triton`` then compiles in a subprocess.
Compiled kernels go to Triton's cache, so only the first run is slow (about a minute per arch).
"""

import importlib
import os

import pytest

pytest.importorskip("triton")

from convmixer_fast import inspect as insp  # noqa: E402
from convmixer_fast.ops._triton_utils import config_label  # noqa: E402

GEMM_MODULES = ("convmixer_fast.ops.stem", "convmixer_fast.ops.pointwise")
TENSOR_CORE_KINDS = {"wgmma", "mma", "none"}
SHARED_LIMIT = {"sm_90a": 228 * 1024, "sm_80": 164 * 1024}  # per block, static + dynamic


def is_gemm(row):
    return "pointwise" in row["kernel"] or "stem" in row["kernel"]


@pytest.fixture(scope="module")
def sm90_rows():
    return insp.inspect_kernels("sm_90a", backends=("triton",))


@pytest.fixture(scope="module")
def sm80_gemm_rows():
    return insp.inspect_triton("sm_80", modules=GEMM_MODULES)


def check_row(row, arch, backend="triton"):
    assert tuple(row) == insp.ROW_KEYS
    assert row["backend"] == backend
    assert row["arch"] == arch
    assert isinstance(row["kernel"], str) and row["kernel"]
    assert isinstance(row["config"], str) and ("w=" in row["config"] or backend == "cuda")
    assert isinstance(row["registers"], int) and 1 <= row["registers"] <= 255
    assert isinstance(row["shared_bytes"], int) and 0 <= row["shared_bytes"] <= SHARED_LIMIT[arch]
    assert isinstance(row["spill_bytes"], int) and row["spill_bytes"] >= 0
    assert row["tensor_core"] in TENSOR_CORE_KINDS


def test_sm90_rows_are_sane(sm90_rows):
    assert sm90_rows
    for row in sm90_rows:
        check_row(row, "sm_90a")
    # every op module contributes, one row per (kernel, config)
    for op in ("stem", "depthwise", "pointwise", "head"):
        assert any(op in row["kernel"] for row in sm90_rows), op
    keys = [(row["kernel"], row["config"]) for row in sm90_rows]
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize("rows, reserved", [("sm90_rows", 1024), ("sm80_gemm_rows", 0)])
def test_pointwise_shared_memory_is_what_the_autotuner_counts(request, rows, reserved):
    """``pointwise.shared_memory_bytes``, by which the autotuner leaves out configs that do not fit a
    GPU, is at least what each compiled config asks for: bf16 here; to the byte on sm_90a but for
    the TMA configs' barriers (and in fp32 too), one stage less on sm_80. (``reserved``: the 1 KB
    per block sm_90 keeps for the system, in the cubin's static count and outside Triton's limit.)"""
    from convmixer_fast.ops import pointwise

    by_label = {config_label(config): config for config in pointwise.CONFIGS}
    compiled = [row for row in request.getfixturevalue(rows) if "pointwise" in row["kernel"]]
    assert compiled
    for row in compiled:
        assert row["shared_bytes"] - reserved <= pointwise.shared_memory_bytes(by_label[row["config"]], 2), row


def test_sm90_gemms_use_wgmma(sm90_rows):
    gemms = [row for row in sm90_rows if is_gemm(row)]
    assert any("stem" in row["kernel"] for row in gemms)
    assert any("pointwise" in row["kernel"] for row in gemms)
    not_wgmma = [(row["kernel"], row["config"]) for row in gemms if row["tensor_core"] != "wgmma"]
    assert not not_wgmma


def test_sm90_nothing_spills(sm90_rows):
    spilling = [
        (row["kernel"], row["config"], row["spill_bytes"])
        for row in sm90_rows
        if row["spill_bytes"] > 0
    ]
    assert not spilling, "configs that spill (kernel, config, bytes):\n" + "\n".join(
        map(str, spilling)
    )


def test_sm80_gemms_use_mma(sm80_gemm_rows):
    assert any("stem" in row["kernel"] for row in sm80_gemm_rows)
    assert any("pointwise" in row["kernel"] for row in sm80_gemm_rows)
    for row in sm80_gemm_rows:
        check_row(row, "sm_80")
        assert row["tensor_core"] == "mma", (row["kernel"], row["config"])


def test_interpret_env_compiles_in_a_subprocess(monkeypatch):
    """With TRITON_INTERPRET=1 the kernels are interpreter functions: inspect must still work."""
    modules = ("convmixer_fast.ops.head",)
    # Imported under the session's own setting first: imported here with the variable unset, the
    # module would keep compiled kernels and full autotune lists for the later tests of this process
    # (Triton 3.6 fixes both when a kernel is defined: they then look for a GPU driver on CPU).
    importlib.import_module(modules[0])
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    rows = insp.inspect_triton("sm_80", modules=modules)
    assert {row["kernel"] for row in rows} == {"head_pool", "head_classifier"}
    for row in rows:
        check_row(row, "sm_80")
    monkeypatch.delenv("TRITON_INTERPRET")
    # In-process (or, if the session imported the kernels under the interpreter, again in a
    # subprocess): the same rows.
    assert insp.inspect_triton("sm_80", modules=modules) == rows


def test_format_table(sm80_gemm_rows):
    table = insp.format_table(sm80_gemm_rows)
    lines = table.splitlines()
    assert len(lines) == len(sm80_gemm_rows) + 2
    assert lines[0].split() == ["backend", "kernel", "config", "arch", "regs", "shared_B",
                                "spill_B", "tensor_core"]
    assert set(lines[1]) <= {"-", " "}
    assert len({len(line) for line in lines[2:]}) <= 2  # aligned (last column may vary: mma)
    for row, line in zip(sm80_gemm_rows, lines[2:]):
        assert line.split() == [str(row[k]) for k in insp.ROW_KEYS]


def test_bad_arch_and_backend():
    with pytest.raises(ValueError, match="unsupported arch 'sm_75'"):
        insp.inspect_kernels("sm_75")
    with pytest.raises(ValueError, match="unsupported arch"):
        insp.inspect_triton("sm_90")
    with pytest.raises(ValueError, match="unknown backend 'metal'"):
        insp.inspect_kernels("sm_80", backends=("metal",))


def test_tensor_core_kind():
    assert insp.tensor_core_kind("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16") == "wgmma"
    assert insp.tensor_core_kind("  /*0a30*/  HGMMA.64x128x16.F32.BF16 R24, gdesc[UR4]") == "wgmma"
    assert insp.tensor_core_kind("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32") == "mma"
    assert insp.tensor_core_kind("  /*0a30*/  HMMA.16816.F32.BF16 R4, R8, R12, R4 ;") == "mma"
    assert insp.tensor_core_kind("fma.rn.f32 %f1, %f2, %f3, %f4;  FFMA R1, R2, R3, R4") == "none"


def test_parse_resource_usage():
    text = """
Resource usage:
 Common:
  GLOBAL:11 CONSTANT[4]:8
 Function pointwise_kernel:
  REG:255 STACK:376 SHARED:1024 LOCAL:0 CONSTANT[0]:608 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function other:
  REG:40 STACK:0 SHARED:0 LOCAL:8 CONSTANT[0]:400 TEXTURE:0 SURFACE:0 SAMPLER:0
"""
    usage = insp.parse_resource_usage(text)
    assert usage == {
        "pointwise_kernel": {"REG": 255, "STACK": 376, "SHARED": 1024, "LOCAL": 0},
        "other": {"REG": 40, "STACK": 0, "SHARED": 0, "LOCAL": 8},
    }
    assert insp.spill_bytes(usage["pointwise_kernel"]) == 376
    assert insp.spill_bytes(usage["other"]) == 8


# The cuda backend: one translation unit per kernel family (all of them take minutes on 2 cores; the
# CI's CMake check compiles every one for both archs with -Werror and spill warnings as errors).
CUDA_SOURCES = [f"{insp.CUDA_KERNEL_DIR}/{name}.cu" for name in
                ("pointwise_sm90_bf16_gelu", "pointwise_sm80_f16_relu", "depthwise_block_bf16", "stem_f16", "head",
                 "pointwise")]


def _cuda_toolchain_missing() -> str | None:
    from convmixer_fast import _settings

    try:
        insp._cuda_tool("nvcc")
        _settings.cutlass_include_dirs()
    except (insp.InspectError, RuntimeError) as error:
        return str(error)
    return None


def test_cubins_are_cached_per_cutlass_version(tmp_path, monkeypatch):
    """An upgraded nvidia-cutlass keeps its include path (and so the flags): the cached cubin must
    still be rebuilt. nvcc is stood in for by a script that writes its -o file."""
    fake_nvcc = tmp_path / "nvcc"
    fake_nvcc.write_text('#!/bin/sh\nwhile [ $# -gt 0 ]; do [ "$1" = -o ] && echo cubin > "$2"; shift; done\n')
    fake_nvcc.chmod(0o755)
    monkeypatch.setattr(insp, "_cuda_tool", lambda name: str(fake_nvcc))
    version_header = tmp_path / "cutlass" / "include" / "cutlass" / "version.h"
    version_header.parent.mkdir(parents=True)
    (version_header.parent / "cutlass.h").write_text("")
    monkeypatch.setenv("CUTLASS_DIR", str(tmp_path / "cutlass"))
    source = f"{insp.CUDA_KERNEL_DIR}/head.cu"
    (tmp_path / "cache").mkdir()
    cubins = []
    for version in (2, 2, 3):
        version_header.write_text(f"#define CUTLASS_MINOR {version}\n")
        cubins.append(insp._compile_cubin(source, "sm_90a", str(tmp_path / "cache")))
    assert cubins[0] == cubins[1] != cubins[2]


@pytest.mark.parametrize("unusable", ["a file", "a read-only folder"])
def test_an_unusable_cubin_cache_names_the_variable(tmp_path, monkeypatch, unusable):
    if unusable == "a file":
        (tmp_path / "root").write_text("")
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into a read-only folder")
        (tmp_path / "root" / "inspect").mkdir(parents=True)
        (tmp_path / "root" / "inspect").chmod(0o555)
    monkeypatch.setenv("CONVMIXER_FAST_CACHE_DIR", str(tmp_path / "root"))
    with pytest.raises(insp.InspectError, match="set CONVMIXER_FAST_CACHE_DIR to a writable folder"):
        insp.inspect_cuda("sm_90a", sources=[f"{insp.CUDA_KERNEL_DIR}/head.cu"])


@pytest.fixture(scope="module", params=["sm_90a", "sm_80"])
def cuda_rows(request):
    missing = _cuda_toolchain_missing()
    if missing:
        pytest.skip(missing)
    return request.param, insp.inspect_cuda(request.param, sources=CUDA_SOURCES)


def test_cuda_kernels_compile_without_spills(cuda_rows):
    arch, rows = cuda_rows
    kernels = {row["kernel"] for row in rows}
    assert {"depthwise_block_kernel", "stem_kernel", "head_pool_kernel",
            "head_classifier_kernel"} <= kernels and any(k.startswith("cutlass::") for k in kernels), kernels
    for row in rows:
        check_row(row, arch, backend="cuda")
        assert row["spill_bytes"] == 0, row


def test_cuda_gemms_use_the_architectures_tensor_cores(cuda_rows):
    arch, rows = cuda_rows
    by_config = {row["config"]: row["tensor_core"] for row in rows if row["kernel"].startswith("cutlass::")}
    expected = "wgmma" if arch == "sm_90a" else "mma"
    assert expected in by_config.values(), by_config  # sm_90a: the TMA + wgmma kernel shows HGMMA
    stem = {row["tensor_core"] for row in rows if row["kernel"] == "stem_kernel" and "float," not in row["config"]}
    assert stem == {"mma"}, stem  # 16-bit stems: WMMA (mma.sync) on both archs
