"""``python -m convmixer_fast inspect``: compile every kernel for a GPU architecture, no GPU needed.

One row per kernel and autotune config, each a dict with exactly the keys of ``ROW_KEYS``:

- ``backend``: ``"triton"`` (later ``"cuda"``), ``kernel``, ``config`` (its label), ``arch``;
- ``registers``: registers per thread, ``spill_bytes``: stack frame + local memory per thread
  (bytes; in these kernels, which make no calls, that memory only ever holds register spills),
  both read from the cubin with ``cuobjdump --dump-resource-usage`` (there is no driver to ask);
- ``shared_bytes``: shared memory per block, static (in the cubin) + dynamic (what the launcher
  requests: ``metadata.shared`` for Triton);
- ``tensor_core``: ``"wgmma"`` (Hopper warpgroup MMA), ``"mma"`` (``mma.sync``) or ``"none"``,
  from the PTX (``wgmma.mma_async`` / ``mma.sync``) or the SASS (``HGMMA`` / ``HMMA``).

Backends are functions ``arch -> list[row]`` in ``BACKENDS``; a CUDA backend (nvcc-compiled .cu
files) plugs in by adding ``BACKENDS["cuda"] = inspect_cuda``, and can reuse
``cubin_resource_usage`` and ``tensor_core_kind`` on its own cubins / SASS.

Triton kernels come from ``kernel_specs()`` of the op modules in ``TRITON_OP_MODULES`` and are
compiled with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cap, 32))`` (works in
triton 3.6 and 3.9; compiled kernels land in Triton's own cache, so a second run is fast).
Under ``TRITON_INTERPRET=1`` ``@triton.jit`` yields interpreter functions that cannot be compiled,
so ``inspect_triton`` then runs itself in a subprocess with the variable removed.
"""

from __future__ import annotations

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
from typing import Callable

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


def cubin_resource_usage(cubin: bytes | str) -> dict[str, dict[str, int]]:
    """Resource usage per function of a cubin (its bytes, or a path to a cubin / object file)."""
    tool = find_cuobjdump()
    if isinstance(cubin, (bytes, bytearray)):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "kernel.cubin")
            with open(path, "wb") as f:
                f.write(cubin)
            return cubin_resource_usage(path)
    result = subprocess.run(
        [tool, "--dump-resource-usage", cubin], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise InspectError(f"cuobjdump failed on {cubin}: {result.stderr.strip()}")
    usage = parse_resource_usage(result.stdout)
    if not usage:
        raise InspectError(f"no function in the resource usage of {cubin}:\n{result.stdout}")
    return usage


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

    signature, constexprs = _full_signature(spec)
    attrs = {
        (index,): [["tt.divisibility", 16]]
        for index, (name, kind) in enumerate(signature.items())
        if kind.startswith("*") or name in spec.divisible_by_16
    }
    source = ASTSource(fn=spec.fn, signature=signature, constexprs=constexprs, attrs=attrs)
    options = {"num_warps": spec.num_warps, "num_stages": spec.num_stages}
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
    modules = tuple(modules)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return _inspect_triton_subprocess(arch, modules)
    specs = _triton_specs(modules)
    if not all(_is_compilable(spec.fn) for spec in specs):
        # Imported while TRITON_INTERPRET was set: interpreter functions, not JIT functions.
        return _inspect_triton_subprocess(arch, modules)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # e.g. triton 3.9's FP-fusion default notice
        return [_triton_row(spec, arch, capability) for spec in specs]


# ----------------------------------------------------------------------------- dispatch, output

BACKENDS: dict[str, Callable[[str], list[dict]]] = {"triton": inspect_triton}


def inspect_kernels(arch: str, backends=("triton",)) -> list[dict]:
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
