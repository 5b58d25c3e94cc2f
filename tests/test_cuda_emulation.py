"""The CUDA depthwise-block kernel (csrc/kernels/depthwise_block.cuh), checked on the host: no GPU.

tests/cuda_emulation/depthwise_block_host.cu compiles the real kernel header as host code, runs
every CUDA thread of a block as a std::thread (``__syncthreads`` a barrier, shared memory a
NaN-filled array) and compares each output with an fp64 reference, for a fixed list of shapes:
every compile-time k and the runtime-k path, images smaller than the kernel, widths that are not a
multiple of the 16-column strip, the 16-byte and the element-wise load/store paths, fp32 / fp16 /
bf16, GELU / ReLU, batch > 1, and the model's 32 x 32, k = 9 block at C = 24.

What passing proves: on those shapes, the kernel's index math, tiling (including the overlapping
right-anchored strips, whichever CTA writes last), zero padding, staging, channel tails and
epilogue give every output its value within fp32 rounding; every output is written; nothing is
written just outside the output tensor; no NaN guard around the inputs and no unstaged shared
memory is read into a result.

What it does not prove: anything the host does not model -- warp scheduling and divergence, the GPU
memory model, bank conflicts, alignment faults, register pressure, occupancy, performance. Those
need a GPU (the op tests with the cuda backend, on a machine that has one).

Needs nvcc (the CUDA headers and host compilation), from $CUDA_HOME/bin, PATH or
/usr/local/cuda/bin; skipped without it. About 10 s, compile included.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "tests" / "cuda_emulation" / "depthwise_block_host.cu"
KERNELS = ROOT / "csrc" / "kernels"


def find_nvcc():
    """nvcc from $CUDA_HOME/bin, PATH or /usr/local/cuda/bin (in that order), or None."""
    candidates = []
    if os.environ.get("CUDA_HOME"):
        candidates.append(Path(os.environ["CUDA_HOME"]) / "bin" / "nvcc")
    if shutil.which("nvcc"):
        candidates.append(Path(shutil.which("nvcc")))
    candidates.append(Path("/usr/local/cuda/bin/nvcc"))
    for nvcc in candidates:
        if nvcc.is_file() and os.access(nvcc, os.X_OK):
            return nvcc
    return None


def test_depthwise_block_kernel_on_host_emulation(tmp_path):
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found in $CUDA_HOME/bin, on PATH or in /usr/local/cuda/bin: the host "
                    "emulation of the CUDA kernel needs the CUDA toolkit (not a GPU)")
    binary = tmp_path / "depthwise_block_host"
    build = subprocess.run(
        [str(nvcc), "-std=c++17", "-I", str(KERNELS), str(SOURCE), "-o", str(binary)],
        capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, f"nvcc failed ({build.returncode}):\n{build.stdout}{build.stderr}"

    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=300)
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"host emulation failed (exit code {run.returncode}):\n{output}"
    summary = re.search(r"^PASSED: (\d+) cases, 0 failed$", run.stdout, re.MULTILINE)
    assert summary and int(summary.group(1)) > 0, f"no passing summary line:\n{output}"
