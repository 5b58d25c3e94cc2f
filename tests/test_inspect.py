"""``convmixer_fast.inspect``: every Triton kernel compiles for sm_90a / sm_80 without a GPU.

Needs Triton (its bundled ptxas and cuobjdump), no GPU and no interpreter. Works whether or not
TRITON_INTERPRET=1 is set for the session: ``inspect_triton`` then compiles in a subprocess.
Compiled kernels go to Triton's cache, so only the first run is slow (about a minute per arch).
"""

import importlib
import json
import os
import sys

import pytest

pytest.importorskip("triton")

import triton.language as tl  # noqa: E402

from convmixer_fast import inspect as insp  # noqa: E402
from convmixer_fast.ops._triton_utils import config_label  # noqa: E402

GEMM_MODULES = ("convmixer_fast.ops.stem", "convmixer_fast.ops.pointwise")
TENSOR_CORE_KINDS = {"wgmma", "mma", "none"}
SHARED_LIMIT = {"sm_90a": 228 * 1024, "sm_80": 164 * 1024}  # per block, static + dynamic
# Shared memory per block the GPU keeps for the system, in the cubin's static count of every kernel that
# uses shared memory (and outside Triton's limit).
SYSTEM_SHARED = {"sm_90a": 1024, "sm_80": 0}


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


@pytest.mark.parametrize("rows, arch, fewer_stages", [("sm90_rows", "sm_90a", 0), ("sm80_gemm_rows", "sm_80", 1)])
def test_pointwise_shared_memory_is_what_the_autotuner_counts(request, rows, arch, fewer_stages):
    """``pointwise.shared_memory_bytes``, by which the autotuner leaves out configs that do not fit a
    GPU, is at least what each compiled config asks for: bf16 here; to the byte on sm_90a but for
    the TMA configs' barriers (and in fp32 too), one stage less on sm_80 (``fewer_stages``). And the
    row holds every operand stage Triton allocates (its dynamic shared memory) besides the cubin's
    static count (``SYSTEM_SHARED``)."""
    from convmixer_fast.ops import pointwise

    by_label = {config_label(config): config for config in pointwise.CONFIGS}
    compiled = [row for row in request.getfixturevalue(rows) if "pointwise" in row["kernel"]]
    assert compiled
    for row in compiled:
        config = by_label[row["config"]]
        stage_bytes = (config.kwargs["BLOCK_M"] + config.kwargs["BLOCK_N"]) * config.kwargs["BLOCK_K"] * 2
        allocated = (config.num_stages - fewer_stages) * stage_bytes
        assert allocated <= row["shared_bytes"] - SYSTEM_SHARED[arch] <= pointwise.shared_memory_bytes(config, 2), row


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
        for key, header in (("registers", "regs"), ("shared_bytes", "shared_B"), ("spill_bytes", "spill_B")):
            assert line[:lines[0].index(header) + len(header)].endswith(f" {row[key]}"), (key, line)  # right-aligned


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
    assert insp.tensor_core_kind(".visible .entry gamma_kernel(.param .u64 gamma_kernel_param_0)") == "none"


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


def toy_kernel(x_ptr, n, BLOCK: tl.constexpr = 64):  # (compiled by no test: its arguments are read)
    pass


def toy_spec(signature, constexprs):
    from triton.runtime.jit import JITFunction

    from convmixer_fast.ops._triton_utils import KernelSpec

    return KernelSpec("toy", JITFunction(toy_kernel), signature, constexprs, num_warps=4, num_stages=1,
                      config="w=4,s=1")


@pytest.mark.parametrize("constexprs, block", [({"BLOCK": 128}, 128), ({}, 64)])
def test_full_signature_takes_the_specs_constexprs_else_the_defaults(constexprs, block):
    spec = toy_spec({"x_ptr": "*fp32", "n": "i32"}, constexprs)
    assert insp._full_signature(spec) == ({"x_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr"}, {"BLOCK": block})


@pytest.mark.parametrize("signature, message", [
    ({"x_ptr": "*fp32"}, "argument 'n' of toy_kernel is neither in its signature nor in its constexprs"),
    ({"x_ptr": "*fp32", "n": "i32", "m": "i32"}, r"\['m'\] are not arguments of toy_kernel"),
])
def test_a_spec_that_does_not_match_its_kernel_is_refused(signature, message):
    with pytest.raises(insp.InspectError, match=r"kernel spec toy \[w=4,s=1\]: " + message):
        insp._full_signature(toy_spec(signature, {}))


def test_an_unreadable_cubin_is_an_error(tmp_path):
    """Not a cubin without kernels (a launcher's: no rows, no error), as a corrupt cached one would pass
    for; nor one whose SASS shows no tensor cores."""
    with pytest.raises(insp.InspectError, match="cuobjdump --dump-resource-usage failed on .*kernel.cubin"):
        insp.cubin_resource_usage(b"not a cubin", require_functions=False)
    corrupt = tmp_path / "corrupt.cubin"
    corrupt.write_bytes(b"not a cubin")
    with pytest.raises(insp.InspectError, match="cuobjdump -sass failed on .*corrupt.cubin"):
        insp._cuobjdump("-sass", str(corrupt))


# Kernel names as the demangler gives them (the CUTLASS ones abridged, from the cubins of
# pointwise_sm80_f16_relu.cu and, which it does not demangle, pointwise_sm90_bf16_gelu.cu).
@pytest.mark.parametrize("name, kernel, config", [
    ("void convmixer_fast::depthwise_detail::depthwise_block_kernel<__nv_bfloat16, 0, (convmixer_fast::Activation)1>"
     "(convmixer_fast::depthwise_detail::Params<__nv_bfloat16>)", "depthwise_block_kernel", "__nv_bfloat16, 0, relu"),
    ("void convmixer_fast::stem_kernel<cutlass::half_t, (convmixer_fast::Activation)0>(cutlass::half_t const*, float*)",
     "stem_kernel", "half_t, gelu"),
    ("void convmixer_fast::toy_kernel<float, " + "1, " * 40 + "(convmixer_fast::Activation)0>(float*)",
     "toy_kernel", "float, " + "1, " * 16 + "1,..."),
    ("void cutlass::Kernel2<cutlass::gemm::kernel::DefaultGemmWithVisitor<cutlass::half_t, "
     "cutlass::layout::RowMajor, (cutlass::ComplexTransform)0, 8, cutlass::half_t, cutlass::layout::ColumnMajor, "
     "(cutlass::ComplexTransform)0, 8, cutlass::half_t, cutlass::layout::RowMajor, 8, float, float, "
     "cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80, cutlass::gemm::GemmShape<128, 256, 32>, "
     "cutlass::gemm::GemmShape<64, 64, 32>, cutlass::gemm::GemmShape<16, 8, 16>, "
     "cutlass::epilogue::threadblock::TreeVisitor2x<cutlass::epilogue::threadblock::VisitorCompute<"
     "convmixer_fast::pointwise_detail::FusedEpilogue<(convmixer_fast::Activation)1>::Fn, float, float, "
     "(cutlass::FloatRoundStyle)2, void>, cutlass::epilogue::threadblock::VisitorAccFetch>, "
     "cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<8>, 3, cutlass::arch::OpMultiplyAdd, 1>::SelectBase<"
     "cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<8>, void> >("
     "cutlass::gemm::kernel::DefaultGemmWithVisitor<cutlass::half_t>::Params)",
     "cutlass::Kernel2", "half_t, GemmShape<128, 256, 32>, GemmShape<64, 64, 32>, GemmShape<16, 8, 16>, relu"),
    ("_ZN7cutlass13device_kernelINS_4gemm6kernel13GemmUniversalIN4cute5tupleIJiiiiEEENS1_10collective"
     "13CollectiveMmaINS1_34MainloopSm90TmaGmmaWarpSpecializedILi6ENS5_IJNS4_1CILi2EEENSA_ILi1EEESC_EEENS1_32"
     "KernelTmaWarpSpecializedPingpongEEENS5_IJNSA_ILi128EEESG_NSA_ILi64EEEEEENS_10bfloat16_tENS5_IJlSC_lEEESJ_SK_"
     "NS4_8TiledMMAINS4_8MMA_AtomIJNS4_4SM904GMMA28MMA_64x128x16_F32BF16BF16_SSILNSO_5MajorE0ELSQ_0ELNSO_7ScaleIn"
     "E1ELSR_1EEEEEENS1N_11Sm90ComputeIN14convmixer_fast16pointwise_detail13FusedEpilogueILNS1Q_10ActivationE0EE2Fn"
     "ESJ_fLNS_15FloatRoundStyleE2EvEEEEEvNT_6ParamsE",
     "cutlass::device_kernel", "KernelTmaWarpSpecializedPingpong, MMA_64x128x16_F32BF16BF16, gelu"),
], ids=["templated", "cutlass types as arguments", "long config", "cutlass 2.x", "cutlass 3.x mangled"])
def test_kernel_and_config(name, kernel, config):
    assert insp._kernel_and_config(name) == (kernel, config)


# The cuda backend: one translation unit per kernel family, the pointwise GEMM the launcher runs on
# the arch's GPUs (all of them take minutes on 2 cores; the CI's CMake check compiles every one for
# both archs with -Werror and spill warnings as errors, the CUTLASS 2.x GEMM's sm_90a code included).
CUDA_SOURCES = {arch: [f"{insp.CUDA_KERNEL_DIR}/{name}.cu" for name in
                       (gemm, "depthwise_block_bf16", "stem_f16", "head", "pointwise")]
                for arch, gemm in [("sm_90a", "pointwise_sm90_bf16_gelu"), ("sm_80", "pointwise_sm80_f16_relu")]}


def _cuda_toolchain_missing() -> str | None:
    from convmixer_fast import _settings

    try:
        insp._cuda_tool("nvcc")
        _settings.cutlass_include_dirs()
    except (insp.InspectError, RuntimeError) as error:
        return str(error)
    return None


@pytest.fixture
def cutlass_headers(tmp_path, monkeypatch):
    """CUTLASS_DIR at a stand-in checkout (empty cutlass.h): the cuda backend's flags name it; the
    kernels compiled here include none of it. Its cutlass/version.h, which the cubins are cached by."""
    version_header = tmp_path / "cutlass" / "include" / "cutlass" / "version.h"
    version_header.parent.mkdir(parents=True)
    (version_header.parent / "cutlass.h").write_text("")
    version_header.write_text("#define CUTLASS_MINOR 0\n")
    monkeypatch.setenv("CUTLASS_DIR", str(tmp_path / "cutlass"))
    return version_header


def use_fake_nvcc(folder, monkeypatch, error: str = ""):
    """nvcc stood in for by a script that writes its -o file and, for --version, prints the file beside
    it (returned); with an ``error``, it then prints that on stderr and fails."""
    nvcc = folder / "nvcc"
    nvcc.write_text('#!/bin/sh\n[ "$1" = --version ] && exec cat "$0.version"\n'
                    'while [ $# -gt 0 ]; do [ "$1" = -o ] && echo cubin > "$2"; shift; done\n'
                    + (f"echo '{error}' >&2; exit 1\n" if error else ""))
    nvcc.chmod(0o755)
    monkeypatch.setattr(insp, "_cuda_tool", lambda name: str(nvcc))
    version = folder / "nvcc.version"
    version.write_text("Cuda compilation tools, release 13.0\n")
    return version


@pytest.mark.parametrize("changed", ["the source", "a header", "the nvcc flags", "NVCC_PREPEND_FLAGS",
                                     "NVCC_APPEND_FLAGS", "the nvcc version", "the CUTLASS version"])
def test_a_cubin_is_rebuilt_when_an_input_changes(tmp_path, monkeypatch, cutlass_headers, changed):
    """The cache key covers all a cubin is compiled from: its source, even outside csrc/kernels, the
    headers beside the sources, the flags (nvcc's own from the environment too), nvcc, and CUTLASS,
    whose upgrade keeps its include path and so the flags."""
    from convmixer_fast import _settings

    kernels = tmp_path / "kernels"
    kernels.mkdir()
    monkeypatch.setattr(insp, "CUDA_KERNEL_DIR", str(kernels))
    source = tmp_path / "toy.cu"
    inputs = {"the source": source, "a header": kernels / "toy.cuh",
              "the nvcc version": use_fake_nvcc(tmp_path, monkeypatch), "the CUTLASS version": cutlass_headers}
    for path in (source, kernels / "toy.cuh"):
        path.write_text("")
    flags = _settings.NVCC_FLAGS
    (tmp_path / "cache").mkdir()
    cubins = []
    for version in (1, 1, 2):
        if changed == "the nvcc flags":
            monkeypatch.setattr(_settings, "NVCC_FLAGS", [*flags, f"-DTOY_VERSION={version}"])
        elif changed.startswith("NVCC_"):
            monkeypatch.setenv(changed, f"-DTOY_VERSION={version}")
        else:
            inputs[changed].write_text(f"version {version}\n")
        cubins.append(insp._compile_cubin(str(source), "sm_90a", str(tmp_path / "cache")))
    assert cubins[0] == cubins[1] != cubins[2]
    assert os.path.isfile(cubins[2])


def test_the_cache_keeps_the_most_recently_used_cubins_of_each_source(tmp_path, monkeypatch, cutlass_headers):
    """Each edit compiles a cubin under a new key; per source and arch the CUBINS_KEPT_PER_SOURCE
    most recently used stay (a cache hit counts as a use), other sources' and arches' untouched."""
    kernels = tmp_path / "kernels"
    kernels.mkdir()
    monkeypatch.setattr(insp, "CUDA_KERNEL_DIR", str(kernels))
    monkeypatch.setattr(insp, "CUBINS_KEPT_PER_SOURCE", 2)
    use_fake_nvcc(tmp_path, monkeypatch)
    cache = tmp_path / "cache"
    cache.mkdir()
    toy, toy_bf16 = tmp_path / "toy.cu", tmp_path / "toy_bf16.cu"  # (one name the other's prefix)
    toy_bf16.write_text("")
    others = [insp._compile_cubin(str(toy_bf16), "sm_90a", str(cache))]
    others.append(str(cache / f"toy-sm_90a-{'0' * 16}.cubin.1234.tmp"))  # (another process's, being written)
    with open(others[-1], "w"):
        os.utime(others[-1], ns=(0, 0))
    toy.write_text("")
    others.append(insp._compile_cubin(str(toy), "sm_80", str(cache)))
    cubins = []
    for version in range(4):
        toy.write_text(f"version {version}\n")
        cubins.append(insp._compile_cubin(str(toy), "sm_90a", str(cache)))
        os.utime(cubins[-1], ns=(version, version))  # (the file system's clock may not tell them apart)
        if version == 1:  # version 0 used again: now more recent than 1
            toy.write_text("version 0\n")
            assert insp._compile_cubin(str(toy), "sm_90a", str(cache)) == cubins[0]
            assert os.stat(cubins[0]).st_mtime_ns > version  # (touched by the hit)
            os.utime(cubins[0], ns=(10, 10))
    assert sorted(os.listdir(cache)) == sorted(os.path.basename(path) for path in [*others, cubins[0], cubins[3]])


def test_a_failed_compile_names_the_source_and_the_compilers_message(tmp_path, monkeypatch, cutlass_headers):
    """And caches nothing: what nvcc wrote before it failed is not taken for a cubin by the next run."""
    message = 'toy.cu(1): error: expected a ";"'
    use_fake_nvcc(tmp_path, monkeypatch, error=message)
    monkeypatch.setenv("CONVMIXER_FAST_CACHE_DIR", str(tmp_path / "cache"))
    source = tmp_path / "toy.cu"
    source.write_text("int x\n")
    with pytest.raises(insp.InspectError) as error:
        insp.inspect_cuda("sm_80", sources=[str(source)])
    assert str(error.value).startswith(f"nvcc failed on {source} for sm_80:") and message in str(error.value)
    assert not list((tmp_path / "cache").rglob("*.cubin"))


@pytest.mark.parametrize("missing", ["Triton", "nvcc", "CUTLASS"])
def test_a_missing_toolchain_exits_2_naming_it(tmp_path, monkeypatch, capsys, missing):
    """``inspect`` without Triton (an optional dependency), nvcc or the CUTLASS headers: what to
    install or set, no traceback."""
    from convmixer_fast import _settings
    from convmixer_fast.__main__ import main

    monkeypatch.setenv("CONVMIXER_FAST_CACHE_DIR", str(tmp_path / "cache"))
    if missing == "Triton":
        monkeypatch.setitem(sys.modules, "triton", None)  # (import triton: ImportError)
        expected = "inspect: triton not found (pip install triton, on Linux)"
    elif missing == "nvcc":
        monkeypatch.setattr(_settings, "cuda_tool", lambda name: None)
        expected = "inspect: nvcc not found (set CUDA_HOME to a CUDA toolkit)"
    else:
        use_fake_nvcc(tmp_path, monkeypatch)
        monkeypatch.setenv("CUTLASS_DIR", str(tmp_path))
        expected = f"inspect: no cutlass/cutlass.h under {tmp_path}"
    backend = "triton" if missing == "Triton" else "cuda"
    assert main(["inspect", "--arch", "sm_80", "--backend", backend]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(expected) and "Traceback" not in captured.err and captured.out == ""


def test_the_cli_prints_the_rows_of_the_backends_named(monkeypatch, capsys):
    from convmixer_fast.__main__ import main

    row = insp.make_row("cuda", "toy_kernel", "float, 16, relu", "sm_80", 18, 1024, 64, "none")
    monkeypatch.setitem(insp.BACKENDS, "triton", lambda arch: pytest.fail("triton was not named"))
    monkeypatch.setitem(insp.BACKENDS, "cuda", lambda arch: [{**row, "arch": arch}])
    assert main(["inspect", "--arch", "sm_80", "--backend", "cuda", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [row]
    assert main(["inspect", "--arch", "sm_80", "--backend", "cuda"]) == 0
    assert capsys.readouterr().out == insp.format_table([row]) + "\n"


def test_a_row_without_the_row_keys_is_refused(monkeypatch):
    monkeypatch.setitem(insp.BACKENDS, "cuda", lambda arch: [{"kernel": "toy_kernel"}])
    with pytest.raises(insp.InspectError, match=r"backend cuda returned a row with keys \['kernel'\]"):
        insp.inspect_kernels("sm_80", backends=("cuda",))


# Small kernels for the real nvcc (seconds): a template with an activation, static shared memory and a
# histogram at run-time indices (in the stack frame); WMMA (mma.sync); a file without kernels.
TOY_SOURCES = {
    "toy.cu": """namespace convmixer_fast {
enum class Activation : int { kGelu = 0, kRelu = 1 };

template <typename T, int N, Activation A>
__global__ void toy_kernel(T* out, const int* index) {
  __shared__ T tile[256];
  T histogram[N] = {};
  for (int i = 0; i < N; ++i) histogram[index[i] % N] += out[i];
  tile[threadIdx.x] = histogram[index[threadIdx.x] % N];
  __syncthreads();
  out[threadIdx.x] = A == Activation::kRelu ? tile[255 - threadIdx.x] : -tile[255 - threadIdx.x];
}

template __global__ void toy_kernel<float, 16, Activation::kRelu>(float*, const int*);
template __global__ void toy_kernel<float, 32, Activation::kGelu>(float*, const int*);
}  // namespace convmixer_fast
""",
    "wmma.cu": """#include <cuda_fp16.h>
#include <mma.h>

__global__ void wmma_kernel(const half* a, const half* b, float* c) {
  using namespace nvcuda;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, half, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, half, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
  wmma::fill_fragment(fc, 0.0f);
  wmma::load_matrix_sync(fa, a, 16);
  wmma::load_matrix_sync(fb, b, 16);
  wmma::mma_sync(fc, fa, fb, fc);
  wmma::store_matrix_sync(c, fc, 16, wmma::mem_row_major);
}
""",
    "host_only.cu": "int host_only(int x) { return x + 1; }\n",
}


@pytest.mark.parametrize("arch", ["sm_90a", "sm_80"])
def test_cuda_rows_of_small_kernels(tmp_path, monkeypatch, cutlass_headers, arch):
    """Through the real nvcc, cuobjdump and demangler: the static shared memory, the stack frame as
    spill bytes, WMMA as mma, the template arguments (activations named) as the config; no row for a
    file without kernels."""
    try:
        insp._cuda_tool("nvcc")
    except insp.InspectError as error:
        pytest.skip(str(error))
    monkeypatch.setenv("CONVMIXER_FAST_CACHE_DIR", str(tmp_path / "cache"))
    for name, text in TOY_SOURCES.items():
        (tmp_path / name).write_text(text)
    rows = insp.inspect_cuda(arch, sources=[str(tmp_path / name) for name in TOY_SOURCES])
    for row in rows:
        check_row(row, arch, backend="cuda")
    by_kernel = {(row["kernel"], row["config"]): row for row in rows}
    assert sorted(by_kernel) == [("toy_kernel", "float, 16, relu"), ("toy_kernel", "float, 32, gelu"),
                                 ("wmma_kernel", "")]
    for (kernel, config), row in by_kernel.items():
        if kernel == "toy_kernel":
            assert row["shared_bytes"] == 256 * 4 + SYSTEM_SHARED[arch], row
            assert row["spill_bytes"] >= int(config.split(", ")[1]) * 4, row
        assert row["tensor_core"] == ("mma" if kernel == "wmma_kernel" else "none"), row


@pytest.mark.parametrize("arch, compiled", [("sm_80", ["head.cu", "pointwise_sm80_f16_relu.cu"]),
                                             ("sm_90a", ["head.cu", "pointwise_sm80_f16_relu.cu",
                                                         "pointwise_sm90_bf16_gelu.cu"])])
def test_the_sources_named_for_a_later_arch_are_left_out(tmp_path, monkeypatch, arch, compiled):
    """Compiled for sm_80, pointwise_sm90_*.cu holds only CUTLASS's stub, never launched there: no rows,
    from the default sources and from a list alike."""
    for name in ("head.cu", "pointwise_sm80_f16_relu.cu", "pointwise_sm90_bf16_gelu.cu", "common.cuh"):
        (tmp_path / name).write_text("")
    monkeypatch.setattr(insp, "CUDA_KERNEL_DIR", str(tmp_path))
    monkeypatch.setenv("CONVMIXER_FAST_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(insp, "_compile_cubin", lambda source, arch, cache_dir: os.path.basename(source))
    monkeypatch.setattr(insp, "_cuda_rows", lambda cubin, arch: [cubin])
    assert insp.inspect_cuda(arch) == compiled
    assert insp.inspect_cuda(arch, sources=[str(tmp_path / "pointwise_sm90_bf16_gelu.cu")]) == [
        name for name in compiled if "sm90" in name]


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
    return request.param, insp.inspect_cuda(request.param, sources=CUDA_SOURCES[request.param])


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
