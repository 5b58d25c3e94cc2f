"""Every build switch, compiler flag (nvcc's and Triton's) and environment variable of convmixer_fast,
in one place.

Torch-free and importable as a plain file: ``setup.py`` loads it by path, ``CMakeLists.txt`` runs it
(``python convmixer_fast/_settings.py nvcc-flags``), the package imports it.

Build switches (read by ``pip install --no-build-isolation .``):
  CONVMIXER_FAST_NO_CUDA=1         build ``_C`` without CUDA sources even where torch has CUDA.
  CONVMIXER_FAST_CUDA_ARCHS="80;90a"  architectures the CUDA sources are compiled for (";"-separated;
                                   "90a" enables wgmma/TMA). Default: 80;90a. Machine code only (no
                                   PTX): the cuda backend runs on GPUs these cover (``arch_runs_on``:
                                   8.x and 9.0 by default) and says so on others.
  MAX_JOBS=N                       parallel compile jobs (torch.utils.cpp_extension's switch).
  CUDA_HOME                        the CUDA toolkit (torch's switch); its bin/nvcc and
                                   include/cuda_runtime.h must be there. Found by
                                   ``cuda_toolkit_home`` for the build, ``inspect`` and the tests
                                   alike: CUDA_HOME, CUDA_PATH, the toolkit the nvcc on PATH runs
                                   from (asked of nvcc itself, so a wrapper script such as
                                   /usr/local/bin/nvcc does not make torch guess /usr/local), or
                                   /usr/local/cuda.
  CUTLASS_DIR=/path/to/cutlass     a CUTLASS checkout (its include/ and tools/util/include/ are
                                   used). Default: the headers of the PyPI package nvidia-cutlass
                                   (pip install --no-deps nvidia-cutlass==4.2.0.0), found without
                                   importing it. Needed only when CUDA sources are compiled.
  NVCC_PREPEND_FLAGS, NVCC_APPEND_FLAGS  (nvcc's) flags nvcc adds to each of its calls, the build's
                                   and ``inspect``'s alike; part of ``inspect``'s cubin cache key.
CUDA sources are compiled only when torch itself was built with CUDA (``torch.version.cuda``),
a CUDA toolkit is found, and CONVMIXER_FAST_NO_CUDA is not set.

Runtime environment variables:
  CONVMIXER_FAST_CACHE_DIR=/path   where convmixer_fast keeps what it measured or compiled, so a
                                   later process does not redo it: ``auto/`` (the backend measured
                                   fastest per op and shape on each GPU, ``backends/measured.py``)
                                   and ``inspect/`` (the cuda kernels' cubins). Default:
                                   ~/.cache/convmixer_fast (without a home directory:
                                   convmixer_fast-<uid> in the temporary folder). (Triton keeps its
                                   own compiled kernels and autotune results under TRITON_CACHE_DIR,
                                   default ~/.triton.)
  CONVMIXER_FAST_AUTO_MEASURE=0    ``backend="auto"`` takes, per op, the first backend of
                                   ``AUTO_ORDER`` that runs it instead of timing the candidates on
                                   the first call with each new shape (deterministic choices).
  CONVMIXER_FAST_TRITON_AUTOTUNE=0  Triton kernels run the first config of their autotune list
                                   that applies (e.g. fits the GPU's shared memory: ``ops/
                                   _triton_utils.autotune``) without benchmarking the others (the
                                   test suite sets it: results do not depend on the config, compile
                                   time does; each config has its own test). Read when the ops are
                                   first imported.
  TRITON_INTERPRET=1               (Triton's) run Triton kernels on CPU tensors in the interpreter;
                                   makes the ``triton`` backend available on CPU, for testing only.
                                   Must be set before ``triton`` is imported.
  CONVMIXER_FAST_SOURCE_COMMIT=SHA  the commit a copy of the sources without its .git was made from:
                                   ``bench`` and ``bench-ops`` record it in their results where git
                                   cannot tell (``.ci/gpu``'s caller sets it on the GPU machine).

The on/off switches (NO_CUDA, AUTO_MEASURE, TRITON_AUTOTUNE) take 0 / 1, false / true, no / yes or
off / on; unset or empty, their default; any other value raises a ValueError naming the variable.

Development scripts (not read by the package):
  GPU_BUDGET_S=570                 ``.ci/gpu``: seconds its whole invocation may take (each stage gets
                                   at most what is left; the device tool stops a command at 600).
  GPU_LOGS=gpu-out                 ``.ci/gpu``: where its logs and results go (packed into
                                   $OUT/gpu-out.tar.gz when the device tool's OUT is set).
"""

from __future__ import annotations

import os
import re
import sys

ENV_NO_CUDA = "CONVMIXER_FAST_NO_CUDA"
ENV_CUDA_ARCHS = "CONVMIXER_FAST_CUDA_ARCHS"
ENV_CUTLASS_DIR = "CUTLASS_DIR"
ENV_CACHE_DIR = "CONVMIXER_FAST_CACHE_DIR"
ENV_AUTO_MEASURE = "CONVMIXER_FAST_AUTO_MEASURE"
ENV_TRITON_AUTOTUNE = "CONVMIXER_FAST_TRITON_AUTOTUNE"
ENV_SOURCE_COMMIT = "CONVMIXER_FAST_SOURCE_COMMIT"
ENV_NVCC_FLAGS = ("NVCC_PREPEND_FLAGS", "NVCC_APPEND_FLAGS")  # nvcc's own
CUTLASS_PACKAGE = "nvidia-cutlass==4.2.0.0"
DEFAULT_CUDA_ARCHS = "80;90a"
SOURCE_SUFFIXES = (".cpp", ".cu", ".cuh", ".h")  # what ``sources_digest`` reads of csrc/ (and setup.py)

CXX_FLAGS = ["-O3", "-std=c++17"]
# -DNDEBUG: CUTLASS's device-side asserts (calls to __assertfail) make ptxas serialize the sm_90
# wgmma pipeline and spill.
NVCC_FLAGS = ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo", "-DNDEBUG"]
# Compile options of every Triton kernel: each launch passes them and ``inspect`` compiles with them,
# so what runs is what ``inspect`` reads. enable_fp_fusion: ``a * b + c`` may contract into one FMA
# (the epilogues' ``* scale + shift``; the GELU and the depthwise taps use ``tl.fma`` regardless).
# Triton's default through 3.9, which warns when a launch leaves it unset; 3.10 turns it off.
TRITON_COMPILE_OPTIONS = {"enable_fp_fusion": True}


def _switch(name: str, default: bool) -> bool:
    """An on/off environment variable: 1/true/yes/on or 0/false/no/off (any case); unset or empty,
    ``default``. Anything else raises, naming the variable: a typo must not leave it at its default."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}: expected 0 or 1 (or false / true, no / yes, off / on), got {os.environ[name]!r}")


def cache_dir(*parts: str) -> str:
    """A folder under CONVMIXER_FAST_CACHE_DIR (default ~/.cache/convmixer_fast); not created here.
    A leading ``~`` in the variable is expanded (set in a Dockerfile or a .env file, no shell did).
    Without a home (no HOME and no passwd entry, as a container's arbitrary uid has, or HOME set
    empty) the default is convmixer_fast-<uid> in the temporary folder, not a folder named ``~`` in
    the working one nor ``/.cache``."""
    root = os.environ.get(ENV_CACHE_DIR, "").strip()
    if root:
        root = os.path.expanduser(root)
    else:
        home = os.path.expanduser("~")
        if home == "~" or os.environ.get("HOME") == "":  # (expanduser gives "/" for an empty HOME)
            import tempfile

            root = os.path.join(tempfile.gettempdir(), f"convmixer_fast-{os.getuid() if hasattr(os, 'getuid') else 0}")
        else:
            root = os.path.join(home, ".cache", "convmixer_fast")
    return os.path.join(root, *parts)


def auto_measures() -> bool:
    """Whether ``backend="auto"`` times its candidates per op and shape (CONVMIXER_FAST_AUTO_MEASURE)."""
    return _switch(ENV_AUTO_MEASURE, default=True)


def triton_autotunes() -> bool:
    """Whether Triton kernels benchmark their autotune configs (CONVMIXER_FAST_TRITON_AUTOTUNE)."""
    return _switch(ENV_TRITON_AUTOTUNE, default=True)


def runtime_switch_error() -> str | None:
    """The message of the first malformed runtime on/off switch, else None: the CLI asks before it
    runs anything, so a typo stops it at once rather than deep inside a measurement."""
    for read in (auto_measures, triton_autotunes):
        try:
            read()
        except ValueError as error:
            return str(error)
    return None


def source_commit() -> str | None:
    """The commit CONVMIXER_FAST_SOURCE_COMMIT names (for a copy of the sources without .git)."""
    return os.environ.get(ENV_SOURCE_COMMIT, "").strip() or None


def cuda_archs() -> list[str]:
    """The entries of CONVMIXER_FAST_CUDA_ARCHS: two or three digits and an optional "a" each, at
    least one (with none, torch's build would choose architectures of its own)."""
    value = os.environ.get(ENV_CUDA_ARCHS, DEFAULT_CUDA_ARCHS)
    archs = [a.strip() for a in value.split(";") if a.strip()]
    for arch in archs:
        if not re.fullmatch(r"[0-9]{2,3}a?", arch, flags=re.ASCII):
            raise ValueError(f"{ENV_CUDA_ARCHS}: expected entries like 80 or 90a, got {arch!r}")
    if not archs:
        raise ValueError(f"{ENV_CUDA_ARCHS}: expected ';'-separated entries like 80;90a, got {value!r}")
    return archs


def arch_runs_on(arch: str, major: int, minor: int) -> bool:
    """Whether machine code for ``arch`` (an entry of ``cuda_archs()``: "80", "86", "90a") runs on a
    GPU of compute capability major.minor: the same major and at least its minor; an "a" target
    (architecture-specific features) only on exactly its own."""
    digits = arch.removesuffix("a")
    arch_major, arch_minor = int(digits[:-1]), int(digits[-1])
    if arch.endswith("a"):
        return (major, minor) == (arch_major, arch_minor)
    return major == arch_major and minor >= arch_minor


def gencode_flags() -> list[str]:
    return [f"-gencode=arch=compute_{a},code=sm_{a}" for a in cuda_archs()]


def cutlass_include_dirs() -> list[str]:
    """CUTLASS's two header folders: from CUTLASS_DIR, else from the nvidia-cutlass package."""
    root = os.environ.get(ENV_CUTLASS_DIR)
    if root:
        dirs = [os.path.join(root, "include"), os.path.join(root, "tools", "util", "include")]
        where = f"{ENV_CUTLASS_DIR}={root}"
    else:
        import importlib.util

        spec = importlib.util.find_spec("cutlass_library")  # locates the package, runs none of it
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(
                "the CUDA kernels need the CUTLASS headers: pip install --no-deps "
                f"{CUTLASS_PACKAGE} (or set {ENV_CUTLASS_DIR} to a CUTLASS checkout), or build "
                f"without CUDA: {ENV_NO_CUDA}=1"
            )
        source = os.path.join(list(spec.submodule_search_locations)[0], "source")
        dirs = [os.path.join(source, "include"), os.path.join(source, "tools", "util", "include")]
        where = f"the {CUTLASS_PACKAGE.split('==')[0]} package"
    if not os.path.exists(os.path.join(dirs[0], "cutlass", "cutlass.h")):
        raise RuntimeError(f"no cutlass/cutlass.h under {dirs[0]} (from {where})")
    return dirs


def nvcc_toolkit_home(nvcc: str | None) -> str | None:
    """The CUDA toolkit folder the nvcc at this path runs from, or None when it does not answer.

    Asked of nvcc itself: ``nvcc -dryrun`` prints ``#$ _HERE_=<toolkit>/bin``. torch takes the
    parent of nvcc's folder on PATH instead, which for a wrapper script (``/usr/local/bin/nvcc``
    exec'ing ``/usr/local/cuda-13.0/bin/nvcc``) is a folder without the CUDA headers.
    """
    if not nvcc:
        return None
    import subprocess

    try:
        dryrun = subprocess.run([nvcc, "-dryrun", "-x", "cu", "-E", os.devnull],
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    for line in (dryrun.stdout + dryrun.stderr).splitlines():
        if line.startswith("#$ _HERE_="):
            return os.path.dirname(os.path.normpath(line.split("=", 1)[1].strip()))
    return None


def cuda_toolkit_home() -> str | None:
    """The CUDA toolkit folder: CUDA_HOME, else CUDA_PATH, else the toolkit the nvcc on PATH runs
    from (``nvcc_toolkit_home``), else /usr/local/cuda where it exists; None without one."""
    import shutil

    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or nvcc_toolkit_home(shutil.which("nvcc"))
    if home is None and os.path.isdir("/usr/local/cuda"):
        home = "/usr/local/cuda"
    return home


def cuda_tool(name: str) -> str | None:
    """A CUDA toolkit program (nvcc, cu++filt, ...): the toolkit's ``bin/<name>``, else ``name`` on
    PATH; None where neither is an executable."""
    import shutil

    home = cuda_toolkit_home()
    candidates = [os.path.join(home, "bin", name)] if home else []
    candidates.append(shutil.which(name) or "")
    return next((path for path in candidates if path and os.path.isfile(path) and os.access(path, os.X_OK)), None)


def cuda_build_status(torch_cuda_version: str | None, cuda_home: str | None) -> tuple[bool, str]:
    """(build CUDA sources?, why / what) from torch's CUDA version and the toolkit location."""
    if _switch(ENV_NO_CUDA, default=False):
        return False, f"off: {ENV_NO_CUDA} is set"
    if not torch_cuda_version:
        return False, "off: torch is a CPU build"
    if not cuda_home or not os.path.exists(os.path.join(cuda_home, "bin", "nvcc")):
        return False, "off: no CUDA toolkit (nvcc) found; set CUDA_HOME"
    if not os.path.exists(os.path.join(cuda_home, "include", "cuda_runtime.h")):
        return False, f"off: the CUDA toolkit at {cuda_home} has no include/cuda_runtime.h; set CUDA_HOME"
    return True, f"CUDA {torch_cuda_version}, sm_{', sm_'.join(cuda_archs())}"


def sources_digest(root: str) -> str | None:
    """What ``_C`` is compiled from, as 16 hex digits: every C++ / CUDA file under ``root``/csrc and
    ``root``/setup.py (each file's path and bytes), and the compile flags (CXX_FLAGS, NVCC_FLAGS).
    setup.py builds it into ``_C``; ``_extension.extension_status`` compares it with the checkout's
    to tell a build made before its sources were edited. None where ``root`` has no csrc/ (an
    installed package). (Architectures are recorded apart: ``cuda_archs``.)"""
    import hashlib

    csrc = os.path.join(root, "csrc")
    if not os.path.isdir(csrc):
        return None
    paths = [os.path.join(root, "setup.py")]
    for folder, subfolders, files in os.walk(csrc):
        subfolders.sort()
        paths += [os.path.join(folder, name) for name in sorted(files) if name.endswith(SOURCE_SUFFIXES)]
    digest = hashlib.sha256(repr((CXX_FLAGS, NVCC_FLAGS)).encode())
    for path in paths:
        if os.path.isfile(path):
            digest.update(os.path.relpath(path, root).replace(os.sep, "/").encode() + b"\0")
            with open(path, "rb") as file:
                digest.update(file.read() + b"\0")
    return digest.hexdigest()[:16]


if __name__ == "__main__":
    # For CMake: ";"-separated lists.
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what == "nvcc-flags":
        print(";".join(NVCC_FLAGS))
    elif what == "cuda-archs":
        print(";".join(cuda_archs()))
    elif what == "cutlass-include-dirs":
        print(";".join(cutlass_include_dirs()))
    else:
        sys.exit("usage: _settings.py nvcc-flags|cuda-archs|cutlass-include-dirs")
