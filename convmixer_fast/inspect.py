"""``python -m convmixer_fast inspect``: compile every kernel for a GPU architecture, no GPU needed.

One row per kernel and autotune config, each a dict with exactly the keys of ``ROW_KEYS``:

- ``backend``: ``"triton"`` or ``"cuda"``, ``kernel``, ``config`` (its label), ``arch``;
- ``registers``: registers per thread, ``spill_bytes``: stack frame + local memory per thread
  (bytes; in these kernels, which make no calls, that memory only ever holds register spills),
  both read from the cubin with ``cuobjdump --dump-resource-usage`` (there is no driver to ask);
- ``shared_bytes``: shared memory per block, static (in the cubin) + dynamic (what the launcher
  requests: ``metadata.shared`` for Triton; for the cuda backend only the static part is known
  without running, so CUTLASS kernels, whose shared memory is all dynamic, show 0);
- ``tensor_core``: ``"wgmma"`` (Hopper warpgroup MMA), ``"mma"`` (``mma.sync``) or ``"none"``,
  from the PTX (``wgmma.mma_async`` / ``mma.sync``) or the SASS (``HGMMA`` / ``HMMA``).

Backends are functions ``arch -> list[row]`` in ``BACKENDS``.

Triton kernels come from ``kernel_specs()`` of the op modules in ``TRITON_OP_MODULES`` and are
compiled with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cap, 32))`` (works in
triton 3.6 and 3.9; compiled kernels land in Triton's own cache, so a second run is fast).
Under ``TRITON_INTERPRET=1`` ``@triton.jit`` yields interpreter functions that cannot be compiled,
so ``inspect_triton`` then runs itself in a subprocess with the variable removed.

CUDA kernels are compiled from the source tree (``csrc/kernels/*.cu`` of a checkout; an installed
package carries no sources) with nvcc, the flags of ``_settings`` and ``-cubin``, one file per
process in parallel; cubins are cached under ``inspect/`` of ``CONVMIXER_FAST_CACHE_DIR``
(``_settings.cache_dir``) by a hash of the sources, flags and nvcc version, the most recently used
``CUBINS_KEPT_PER_SOURCE`` per source and arch kept. One row per kernel
function, named by its demangled template (``kernel``: the function, ``config``: its template
arguments, shortened).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib
import inspect as _pyinspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from .ops._interpreter import is_interpreting

ROW_KEYS = (
    "backend",
    "kernel",
    "config",
    "arch",
    "registers",
    "shared_bytes",
    "spill_bytes",
    "tensor_core",
)

# --arch value -> compute capability.
ARCHS = {"sm_90a": 90, "sm_80": 80}

TRITON_OP_MODULES = (
    "convmixer_fast.ops.stem",
    "convmixer_fast.ops.depthwise",
    "convmixer_fast.ops.pointwise",
    "convmixer_fast.ops.head",
)

_SUBPROCESS_MARKER = "CONVMIXER_FAST_INSPECT_ROWS:"


class InspectError(RuntimeError):
    """A kernel could not be compiled or its artefacts could not be read."""


def arch_capability(arch: str) -> int:
    """``"sm_90a"`` -> 90, ``"sm_80"`` -> 80; ``ValueError`` for any other architecture."""
    try:
        return ARCHS[arch]
    except KeyError:
        raise ValueError(
            f"unsupported arch {arch!r}: expected one of {', '.join(ARCHS)}"
        ) from None


def make_row(
    backend: str,
    kernel: str,
    config: str,
    arch: str,
    registers: int,
    shared_bytes: int,
    spill_bytes: int,
    tensor_core: str,
) -> dict:
    """A result row with exactly the keys of ``ROW_KEYS`` (every backend builds rows with this)."""
    return {
        "backend": backend,
        "kernel": kernel,
        "config": config,
        "arch": arch,
        "registers": int(registers),
        "shared_bytes": int(shared_bytes),
        "spill_bytes": int(spill_bytes),
        "tensor_core": tensor_core,
    }


# ----------------------------------------------------------------------------- artefact readers


def tensor_core_kind(text: str) -> str:
    """``"wgmma"``, ``"mma"`` or ``"none"`` from PTX and/or SASS text."""
    if "wgmma.mma_async" in text or re.search(r"\bHGMMA\b", text):
        return "wgmma"
    if "mma.sync" in text or re.search(r"\bHMMA\b", text):
        return "mma"
    return "none"


def find_cuobjdump() -> str:
    """Path of ``cuobjdump``: Triton's (``TRITON_CUOBJDUMP_PATH`` honoured), else PATH's."""
    try:
        from triton import knobs

        return knobs.nvidia.cuobjdump.path
    except Exception:  # older/newer triton layout, or the bundled binary is missing
        pass
    try:
        import triton

        bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
        bundled = os.path.join(bin_dir, "cuobjdump")
        if os.access(bundled, os.X_OK):
            return bundled
    except ImportError:
        pass
    found = shutil.which("cuobjdump")
    if found is None:
        raise InspectError("cuobjdump not found (not in triton/backends/nvidia/bin, not on PATH)")
    return found


_RESOURCE_FUNCTION = re.compile(r"^\s*Function\s+(\S+?):?\s*$")
_RESOURCE_FIELD = re.compile(r"\b(REG|STACK|SHARED|LOCAL):(\d+)")


def parse_resource_usage(text: str) -> dict[str, dict[str, int]]:
    """``cuobjdump --dump-resource-usage`` output -> ``{function: {"REG": .., "SHARED": ..}}``."""
    usage: dict[str, dict[str, int]] = {}
    function = None
    for line in text.splitlines():
        match = _RESOURCE_FUNCTION.match(line)
        if match:
            function = match.group(1)
            continue
        fields = dict((k, int(v)) for k, v in _RESOURCE_FIELD.findall(line))
        if function is not None and "REG" in fields:
            usage[function] = fields
            function = None
    return usage


def cubin_resource_usage(cubin: bytes | str, require_functions: bool = True) -> dict[str, dict[str, int]]:
    """Resource usage per function of a cubin (its bytes, or a path to a cubin / object file);
    ``InspectError`` if it has none, unless ``require_functions`` is False (a host-only file)."""
    if isinstance(cubin, (bytes, bytearray)):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "kernel.cubin")
            with open(path, "wb") as f:
                f.write(cubin)
            return cubin_resource_usage(path, require_functions)
    listing = _cuobjdump("--dump-resource-usage", cubin)
    usage = parse_resource_usage(listing)
    if not usage and require_functions:
        raise InspectError(f"no function in the resource usage of {cubin}:\n{listing}")
    return usage


def _cuobjdump(option: str, cubin: str) -> str:
    """``cuobjdump option cubin``'s output; ``InspectError`` with its message if it fails."""
    result = subprocess.run([find_cuobjdump(), option, cubin], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise InspectError(f"cuobjdump {option} failed on {cubin}: {result.stderr.strip()}")
    return result.stdout


def spill_bytes(resources: dict[str, int]) -> int:
    """Bytes per thread that register spills may occupy: the stack frame plus local memory.

    ptxas places spills in the thread's stack frame (cuobjdump ``STACK``); ``LOCAL`` counts other
    local memory. Kernels here make no calls and keep no local arrays, so any of it is a spill.
    """
    return resources.get("STACK", 0) + resources.get("LOCAL", 0)


# ----------------------------------------------------------------------------- triton backend


def _triton_specs(modules) -> list:
    specs = []
    for name in modules:
        module = importlib.import_module(name)
        specs.extend(module.kernel_specs())
    return specs


def _is_compilable(fn) -> bool:
    from triton.runtime.jit import JITFunction

    return isinstance(fn, JITFunction)


def _full_signature(spec) -> tuple[dict[str, str], dict[str, object]]:
    """The (signature, constexprs) ``ASTSource`` wants: every argument in order, constexprs typed
    ``"constexpr"``; constexpr defaults of the function fill what the spec leaves out."""
    fn = spec.fn
    defaults = {
        name: p.default
        for name, p in _pyinspect.signature(fn.fn).parameters.items()
        if p.default is not _pyinspect.Parameter.empty
    }
    signature, constexprs = {}, {}
    for param in fn.params:
        name = param.name
        if name in spec.signature:
            signature[name] = spec.signature[name]
        elif name in spec.constexprs or (param.is_constexpr and name in defaults):
            signature[name] = "constexpr"
            constexprs[name] = spec.constexprs.get(name, defaults.get(name))
        else:
            raise InspectError(
                f"kernel spec {spec.kernel} [{spec.config}]: argument {name!r} of {fn.__name__} is"
                " neither in its signature nor in its constexprs"
            )
    unknown = (set(spec.signature) | set(spec.constexprs)) - set(signature)
    if unknown:
        raise InspectError(
            f"kernel spec {spec.kernel} [{spec.config}]: {sorted(unknown)} are not arguments of"
            f" {fn.__name__}"
        )
    return signature, constexprs


def compile_triton_spec(spec, capability: int):
    """Compile one ``KernelSpec`` for ``GPUTarget("cuda", capability, 32)``; the CompiledKernel.

    Pointer arguments, and the integer arguments the spec names in ``divisible_by_16``, are marked
    ``tt.divisibility`` 16, as the JIT does at run time for torch allocations and for sizes that
    are multiples of 16, so loads vectorise as they will when the kernel runs.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ._settings import TRITON_COMPILE_OPTIONS

    signature, constexprs = _full_signature(spec)
    attrs = {
        (index,): [["tt.divisibility", 16]]
        for index, (name, kind) in enumerate(signature.items())
        if kind.startswith("*") or name in spec.divisible_by_16
    }
    source = ASTSource(fn=spec.fn, signature=signature, constexprs=constexprs, attrs=attrs)
    options = {"num_warps": spec.num_warps, "num_stages": spec.num_stages, **TRITON_COMPILE_OPTIONS}
    try:
        return triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options)
    except Exception as exc:
        raise InspectError(
            f"compiling {spec.kernel} [{spec.config}] for capability {capability} failed: {exc}"
        ) from exc


def _triton_row(spec, arch: str, capability: int) -> dict:
    compiled = compile_triton_spec(spec, capability)
    usage = cubin_resource_usage(compiled.asm["cubin"])
    name = compiled.metadata.name
    if name not in usage:
        if len(usage) != 1:
            raise InspectError(f"{name} not among the cubin functions {sorted(usage)}")
        name = next(iter(usage))
    resources = usage[name]
    return make_row(
        backend=spec.backend,
        kernel=spec.kernel,
        config=spec.config,
        arch=arch,
        registers=resources["REG"],
        shared_bytes=resources.get("SHARED", 0) + int(compiled.metadata.shared),
        spill_bytes=spill_bytes(resources),
        tensor_core=tensor_core_kind(compiled.asm["ptx"]),
    )


def _inspect_triton_subprocess(arch: str, modules) -> list[dict]:
    """Run ``inspect_triton`` in a fresh interpreter without ``TRITON_INTERPRET``."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env["PYTHONPATH"] = os.pathsep.join([p for p in sys.path if p] + [env.get("PYTHONPATH", "")])
    code = (
        "import sys, json, convmixer_fast.inspect as i; "
        "rows = i.inspect_triton(sys.argv[1], json.loads(sys.argv[2])); "
        f"print({_SUBPROCESS_MARKER!r} + json.dumps(rows))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, arch, json.dumps(list(modules))],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    for line in reversed(result.stdout.splitlines()):
        if line.startswith(_SUBPROCESS_MARKER):
            return json.loads(line[len(_SUBPROCESS_MARKER):])
    raise InspectError(
        f"inspect subprocess failed (exit {result.returncode}):\n{result.stderr[-4000:]}"
    )


def inspect_triton(arch: str, modules=TRITON_OP_MODULES) -> list[dict]:
    """Compile every ``kernel_specs()`` entry of the Triton op ``modules`` for ``arch``; rows."""
    capability = arch_capability(arch)
    try:
        import triton  # noqa: F401
    except ImportError:
        raise InspectError("triton not found (pip install triton, on Linux): the triton kernels need it to "
                           "compile") from None
    modules = tuple(modules)
    if is_interpreting():
        return _inspect_triton_subprocess(arch, modules)
    specs = _triton_specs(modules)
    if not all(_is_compilable(spec.fn) for spec in specs):
        # Imported while TRITON_INTERPRET was set: interpreter functions, not JIT functions.
        return _inspect_triton_subprocess(arch, modules)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # e.g. triton 3.9's FP-fusion default notice
        return [_triton_row(spec, arch, capability) for spec in specs]


# ----------------------------------------------------------------------------- cuda backend

CUDA_KERNEL_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc", "kernels")
_SASS_FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)\s*$")
_CONFIG_CHARS = 60


def _cuda_tool(name: str) -> str:
    from . import _settings

    path = _settings.cuda_tool(name)
    if path is None:
        raise InspectError(f"{name} not found (set CUDA_HOME to a CUDA toolkit): the cuda kernels need nvcc to compile")
    return path


def _sass_tensor_cores(sass: str) -> dict[str, str]:
    """``cuobjdump -sass`` output -> ``{mangled function: tensor_core_kind}``."""
    kinds: dict[str, str] = {}
    function, body = None, []
    for line in sass.splitlines() + ["Function : <end>"]:
        match = _SASS_FUNCTION.match(line)
        if match:
            if function is not None:
                kinds[function] = tensor_core_kind("\n".join(body))
            function, body = match.group(1), []
        else:
            body.append(line)
    return kinds


def _demangle(names: list[str]) -> dict[str, str]:
    """Mangled -> demangled names, with the toolkit's cu++filt or binutils' c++filt (else unchanged)."""
    try:
        tool = _cuda_tool("cu++filt")
    except InspectError:
        tool = shutil.which("c++filt")
    if tool is None:
        return {name: name for name in names}
    result = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True, check=False)
    demangled = result.stdout.splitlines() if result.returncode == 0 else names
    return dict(zip(names, demangled if len(demangled) == len(names) else names))


# A CUTLASS kernel's name is its whole GEMM type (thousands of characters; the demangler gives up on
# some): its label is the schedule, tile / MMA atom, element type and activation found in it.
_CUTLASS_LABEL_PARTS = re.compile(
    r"Kernel(?:Tma)?\w*?(?:Pingpong|Cooperative)|MMA_\d+x\d+x\d+_\w+?(?=_SS|E)|GemmShape<\d+, \d+, \d+>|"
    r"\bhalf_t\b|\bbfloat16_t\b|ActivationE[01]|\(convmixer_fast::Activation\)[01]"
)
_ACTIVATION_LABELS = {"ActivationE0": "gelu", "ActivationE1": "relu",
                      "(convmixer_fast::Activation)0": "gelu", "(convmixer_fast::Activation)1": "relu"}


def _kernel_and_config(demangled: str) -> tuple[str, str]:
    """``"void ns::f<A, (Activation)0>(args)"`` -> (``"f"``, ``"A, gelu"``, shortened to a label);
    CUTLASS kernels -> (``"cutlass::<kernel>"``, their schedule, tile, element type, activation)."""
    if "cutlass" in demangled.split("<", 1)[0] or demangled.startswith("_ZN7cutlass"):
        kernel = "cutlass::device_kernel" if "device_kernel" in demangled else "cutlass::Kernel2"
        parts = dict.fromkeys(_CUTLASS_LABEL_PARTS.findall(demangled))
        return kernel, ", ".join(_ACTIVATION_LABELS.get(part, part) for part in parts)
    signature = demangled
    if signature.endswith(")"):  # drop the parameter list: the "(" matching the last ")"
        depth = 0
        for index in range(len(signature) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(signature[index], 0)
            if depth == 0:
                signature = signature[:index]
                break
    head, _, templated = signature.partition("<")
    kernel = head.rsplit("::", 1)[-1].removeprefix("void ").strip()
    config = templated[:-1] if templated else ""
    for name, label in _ACTIVATION_LABELS.items():
        config = config.replace(name, label)
    config = re.sub(r"\b(convmixer_fast|cutlass|cute|std)::", "", config)
    config = re.sub(r"\s+", " ", config)
    return kernel, config if len(config) <= _CONFIG_CHARS else config[: _CONFIG_CHARS - 3] + "..."


def _compile_cubin(source: str, arch: str, cache_dir: str) -> str:
    """nvcc ``source`` to a cubin for ``arch`` (cached by sources, flags, including those nvcc
    reads from the environment, nvcc and the CUTLASS version: an upgraded nvidia-cutlass keeps its
    include path); its path."""
    from . import _settings

    nvcc = _cuda_tool("nvcc")
    flags = [*_settings.NVCC_FLAGS, f"-gencode=arch=compute_{arch[3:]},code={arch}", "-cubin",
             f"-I{CUDA_KERNEL_DIR}"]
    try:
        cutlass_include_dirs = _settings.cutlass_include_dirs()
    except RuntimeError as error:  # CUTLASS not found: what to install or set, not a traceback
        raise InspectError(str(error)) from None
    for include in cutlass_include_dirs:
        flags += ["-isystem", include]
    digest = hashlib.sha256()
    # The source (one outside csrc/kernels too) and every file of csrc/kernels (headers change every TU).
    for path in [source, *sorted(glob.glob(os.path.join(CUDA_KERNEL_DIR, "*")))]:
        with open(path, "rb") as f:
            digest.update(os.path.basename(path).encode() + f.read())
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False).stdout
    digest.update(" ".join(flags).encode() + version.encode())
    for variable in _settings.ENV_NVCC_FLAGS:  # (flags nvcc adds itself: the key must see them too)
        digest.update(f"{variable}={os.environ.get(variable, '')}".encode())
    for include in cutlass_include_dirs:
        if os.path.isfile(os.path.join(include, "cutlass", "version.h")):
            with open(os.path.join(include, "cutlass", "version.h"), "rb") as f:
                digest.update(f.read())
    name = os.path.splitext(os.path.basename(source))[0]
    cubin = os.path.join(cache_dir, f"{name}-{arch}-{digest.hexdigest()[:16]}.cubin")
    if os.path.exists(cubin):
        os.utime(cubin)  # (used now: the last to be dropped)
        return cubin
    partial = f"{cubin}.{os.getpid()}.tmp"
    result = subprocess.run([nvcc, *flags, source, "-o", partial], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise InspectError(f"nvcc failed on {source} for {arch}:\n{result.stderr[-4000:]}")
    os.replace(partial, cubin)
    _drop_older_cubins(cache_dir, name, arch)
    return cubin


CUBINS_KEPT_PER_SOURCE = 4  # per source and arch: a few checkouts or branches sharing the cache


def _drop_older_cubins(cache_dir: str, name: str, arch: str) -> None:
    """Delete all but the ``CUBINS_KEPT_PER_SOURCE`` most recently used cubins of source ``name``
    for ``arch``: each edit of a source or header compiles every cubin anew under a new key."""
    pattern = re.compile(rf"{re.escape(name)}-{re.escape(arch)}-[0-9a-f]{{16}}\.cubin")
    last_used = {}
    for entry in os.scandir(cache_dir):
        if pattern.fullmatch(entry.name):
            with contextlib.suppress(FileNotFoundError):  # (another process dropped it first)
                last_used[entry.path] = entry.stat().st_mtime_ns
    for path in sorted(last_used, key=last_used.get, reverse=True)[CUBINS_KEPT_PER_SOURCE:]:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _cuda_rows(cubin: str, arch: str) -> list[dict]:
    usage = cubin_resource_usage(cubin, require_functions=False)  # launchers hold no kernel
    tensor_cores = _sass_tensor_cores(_cuobjdump("-sass", cubin))
    names = _demangle(sorted(usage))
    rows = []
    for mangled in sorted(usage):
        kernel, config = _kernel_and_config(names[mangled])
        resources = usage[mangled]
        rows.append(make_row("cuda", kernel, config, arch, resources["REG"], resources.get("SHARED", 0),
                             spill_bytes(resources), tensor_cores.get(mangled, "none")))
    return rows


# A source named for an architecture (pointwise_sm90_bf16_gelu.cu) holds kernels for it and later
# ones: compiled for an earlier one it holds CUTLASS's stub, which the launchers never call.
_SOURCE_ARCH = re.compile(r"_sm(\d+)")


def inspect_cuda(arch: str, sources: list[str] | None = None) -> list[dict]:
    """Compile the cuda backend's ``sources`` (default: every ``csrc/kernels/*.cu``) for ``arch``,
    but those named for a later architecture; rows."""
    capability = arch_capability(arch)
    if sources is None:
        sources = sorted(glob.glob(os.path.join(CUDA_KERNEL_DIR, "*.cu")))
        if not sources:
            raise InspectError(f"no CUDA kernel sources under {CUDA_KERNEL_DIR}: inspect the cuda backend from a "
                               "source checkout of convmixer_fast")
    sources = [source for source in sources
               if all(int(named) <= capability for named in _SOURCE_ARCH.findall(os.path.basename(source)))]
    from . import _settings

    cache_dir = _settings.cache_dir("inspect")
    try:
        os.makedirs(cache_dir, exist_ok=True)
        if not os.access(cache_dir, os.W_OK | os.X_OK):  # (one already there, read-only: nvcc's own error else)
            raise PermissionError("not writable")
    except OSError as error:
        raise InspectError(f"cannot keep the cubins in {cache_dir} ({error}): set {_settings.ENV_CACHE_DIR} to a "
                           "writable folder") from None
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        cubins = list(pool.map(lambda source: _compile_cubin(source, arch, cache_dir), sources))
    return [row for cubin in cubins for row in _cuda_rows(cubin, arch)]


# ----------------------------------------------------------------------------- dispatch, output

BACKENDS: dict[str, Callable[[str], list[dict]]] = {"triton": inspect_triton, "cuda": inspect_cuda}


def inspect_kernels(arch: str, backends=tuple(BACKENDS)) -> list[dict]:
    """Rows of every kernel and config of each backend in ``backends`` compiled for ``arch``."""
    arch_capability(arch)  # validate before any work
    rows = []
    for backend in backends:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")
        for row in BACKENDS[backend](arch):
            if tuple(row) != ROW_KEYS:
                raise InspectError(f"backend {backend} returned a row with keys {list(row)}")
            rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows as an aligned text table (numbers right-aligned), one line per row."""
    headers = {
        "backend": "backend",
        "kernel": "kernel",
        "config": "config",
        "arch": "arch",
        "registers": "regs",
        "shared_bytes": "shared_B",
        "spill_bytes": "spill_B",
        "tensor_core": "tensor_core",
    }
    numeric = {"registers", "shared_bytes", "spill_bytes"}
    cells = [[headers[k] for k in ROW_KEYS]] + [[str(row[k]) for k in ROW_KEYS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(ROW_KEYS))]
    lines = []
    for line in cells:
        parts = [
            cell.rjust(width) if key in numeric else cell.ljust(width)
            for key, cell, width in zip(ROW_KEYS, line, widths)
        ]
        lines.append("  ".join(parts).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
