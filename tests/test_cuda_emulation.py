"""The CUDA kernels of csrc/kernels checked on the host, without a GPU: one emulation harness each.

Each harness (tests/cuda_emulation/<kernel>_host.cu) compiles the real kernel source as host code
through tests/cuda_emulation/emulation.h, the CUDA execution model on the host: every CUDA thread of
a CTA is a std::thread, ``__syncthreads`` a barrier of the CTA, ``__syncwarp`` and the
``__shfl_*_sync`` intrinsics collectives of a warp's 32 lanes, shared memory arrays poisoned with
NaN before each CTA; CTAs run one at a time, in increasing and then decreasing order. The harness
launches the kernel as its launcher would (grid, block, the vector-path conditions) on a fixed list
of shapes and compares every output with an fp64 reference on the same rounded inputs, within a
documented per-dtype tolerance (one unit of the output dtype plus the fp32 accumulation and
epilogue error). Outputs start as a NaN bit pattern of their own (an output no CTA wrote is
reported as unwritten); inputs and outputs sit between NaN guards inside inaccessible pages (a read
past a tensor poisons a result or faults, a write outside an output is reported). A barrier or
collective that some thread or lane never reaches, or that lanes reach at different calls, fails
the run instead of hanging.

What passing proves, per kernel (on the shapes of each harness's list):
  - depthwise_block (depthwise_block.cuh): index math, tiling (including the overlapping
    right-anchored strips, whichever CTA writes last), zero padding, staging, channel tails and
    epilogue, for every compile-time k and the runtime-k path, the 16-byte and the element-wise
    load/store paths, fp32 / fp16 / bf16, GELU / ReLU, images smaller than the kernel, batch > 1.
  - depthwise band (depthwise_band.cuh, the same harness, cases marked "band"): the tensor-core
    band (Toeplitz) form end to end against the same fp64 reference and tolerance -- the halo and
    tap staging into transposed shared-memory planes (zero padding, channels past C, H and W not
    multiples of the 16 / 32 tiles, images smaller than the kernel, batch > 1), the band matrix B
    each lane builds in registers and the ldmatrix row addresses of A, against the PTX ISA's
    per-lane fragment layouts of ldmatrix .m8n8.x2 / .x4 and mma .m16n8k16 / .m16n8k8 (modelled
    in emulation.h: every lane at the same call, each ldmatrix row 16-byte aligned and inside
    shared memory), the in-place epilogue (after __syncwarp) and the 16-byte stores, on every k in
    1..9 (odd and even), all four tile shapes, f16 / bf16, GELU / ReLU, with the launch arguments
    from the launcher's own helpers (band_params, band_blocks_per_image, band_smem_bytes,
    band_supported).
  - head (head.cu): the pool's 16-byte and element-wise loads and its fixed-order shared-memory
    reduction, the classifier's clamped loads, butterfly reduction (__shfl_xor_sync reached by all
    32 lanes) and lane -> (image, class) stores, at batch / class / channel counts that leave
    partial image, class and channel blocks, C = 0, fp32 / fp16 / bf16.
  - stem (stem.cuh): the patchify address math through all 4 image strides (NCHW, channels_last, a
    strided view whose holes are NaN, a batch-broadcast image), every image dtype into every model
    dtype, partial M / N / K tiles, the register prefetch and the two barriers of the main loop,
    the fp32 FMA path, and the fp16 / bf16 WMMA path with an emulated nvcuda::wmma (sound because
    stem.cuh touches fragments only through the API: the layout of elements over lanes cannot
    matter), including its staged epilogue (a missing __syncwarp after store_matrix_sync is
    caught) and both store paths.

  - epilogue (common.cuh's activate and apply_epilogue, which every kernel ends with): NaN,
    infinities and signed zeros, which the finite inputs of the harnesses above never reach, give
    what torch's GELU and ReLU give (a NaN stays NaN).

What it does not prove: anything the host does not model -- warp scheduling and divergence costs,
the GPU memory model (every write is visible at once; races are only found when the host threads
happen to interleave badly), the real WMMA per-lane layout (unspecified; only the band kernel's
ldmatrix / mma layouts are modelled, as the PTX ISA documents them), the tensor cores' own
accumulation order and rounding (the emulation sums in fp64; the tolerance covers any fp32 order),
alignment faults of vector accesses (ldmatrix's are checked), bank conflicts, register pressure,
occupancy, grid-size limits, the launchers' <<<>>> calls themselves (the harnesses mirror them or
use the launchers' helpers), performance. Those need a GPU (the op tests with the cuda backend).

Needs nvcc (the CUDA headers and host compilation), from the toolkit ``_settings.cuda_toolkit_home``
finds; skipped without it. Host code is built at gcc's default -O0 (fast to compile;
the harnesses add -fno-strict-aliasing since the kernels pun types through reinterpret_cast, which
host gcc miscompiles at -O2). About 10 to 20 s per harness on 2 cores, compile included.
"""

import re
import subprocess
from pathlib import Path

import pytest

from convmixer_fast import _settings

ROOT = Path(__file__).resolve().parents[1]
HARNESSES = ROOT / "tests" / "cuda_emulation"
KERNELS = ROOT / "csrc" / "kernels"


@pytest.mark.parametrize("kernel", ["depthwise_block", "head", "stem", "epilogue"])
def test_cuda_kernel_on_host_emulation(kernel, tmp_path):
    nvcc = _settings.cuda_tool("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found (_settings.cuda_toolkit_home: CUDA_HOME, CUDA_PATH, PATH, /usr/local/cuda): "
                    "the host emulation of the CUDA kernels needs the CUDA toolkit (not a GPU)")
    binary = tmp_path / f"{kernel}_host"
    build = subprocess.run(
        [str(nvcc), "-std=c++17", "-Xcompiler", "-fno-strict-aliasing", "-I", str(KERNELS),
         str(HARNESSES / f"{kernel}_host.cu"), "-o", str(binary)],
        capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, f"nvcc failed ({build.returncode}):\n{build.stdout}{build.stderr}"

    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=300)
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"host emulation of {kernel} failed (exit code {run.returncode}):\n{output}"
    summary = re.search(r"^PASSED: (\d+) cases, 0 failed$", run.stdout, re.MULTILINE)
    assert summary and int(summary.group(1)) > 0, f"no passing summary line:\n{output}"
