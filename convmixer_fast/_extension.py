"""Loading the compiled extension ``convmixer_fast._C`` without making it a requirement.

``import convmixer_fast`` never imports ``_C``; code that needs it calls ``extension_status()``
(what was built, or why it is missing) and gives the user that reason. A ``_C`` built in a checkout
(``pip install -e .``) whose csrc/ was edited since, or against another torch than the one running,
is stale: it still loads, with a warning that says to rebuild.
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass

from . import _settings

# Where a checkout keeps csrc/ (beside the package); an installed package has none there.
CHECKOUT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REBUILD = "pip install --no-build-isolation -e . (or python setup.py build_ext --inplace)"


@dataclass(frozen=True)
class ExtensionStatus:
    loaded: bool
    with_cuda: bool
    detail: str  # what CUDA was built for / why not / why _C could not be loaded
    cuda_archs: tuple[str, ...] = ()  # the CUDA kernels' targets, e.g. ("80", "90a") (machine code only)
    current: bool = False  # built from the csrc/ beside the package as it is now, against the torch running
    stale: str | None = None  # why it is not, where that is known (None: current, or no csrc/ to compare)


@functools.lru_cache(maxsize=None)
def extension_status() -> ExtensionStatus:
    """What ``_C`` is, once per process; warns once where it is stale."""
    try:
        from . import _C  # noqa: F401  (registers the convmixer_fast::* C++ ops)
        from . import _cuda_fakes  # noqa: F401  (their fake implementations)
    except (ImportError, RuntimeError) as error:  # (RuntimeError: a _C without an op _cuda_fakes names)
        return ExtensionStatus(
            False, False,
            f"convmixer_fast._C is not built or failed to load ({error}); "
            "reinstall with: pip install --no-build-isolation .",
        )
    import torch

    status = status_from_build_info(torch.ops.convmixer_fast.build_info(), CHECKOUT_ROOT, torch.__version__)
    if status.stale is not None:
        warnings.warn(f"convmixer_fast._C {status.stale}: rebuild it with {REBUILD}", stacklevel=2)
    return status


def status_from_build_info(build_info: str, root: str, torch_version: str) -> ExtensionStatus:
    """The status of a loaded ``_C`` from its ``build_info()`` ("cuda=1;archs=80,90a;sources=<digest>;
    torch=<version>;status=<detail>"), held to the sources under ``root`` and ``torch_version``. The
    detail comes last and may hold ";" itself ("off: no CUDA toolkit (nvcc) found; set CUDA_HOME")."""
    head, _, detail = build_info.partition(";status=")
    fields = {**dict(item.split("=", 1) for item in head.split(";")), "status": detail}
    archs = tuple(arch for arch in fields.get("archs", "").split(",") if arch)  # (none from a _C built before)
    built_sources, built_torch = fields.get("sources"), fields.get("torch")  # (likewise)
    checkout_sources = _settings.sources_digest(root)
    stale = None
    if built_torch is not None and built_torch != torch_version:
        stale = f"was built against torch {built_torch}, not the torch {torch_version} running"
    elif None not in (built_sources, checkout_sources) and built_sources != checkout_sources:
        stale = (f"was built from other sources than {os.path.join(root, 'csrc')} holds now (edited since, "
                 "or other compile flags)")
    current = stale is None and built_torch is not None and None not in (built_sources, checkout_sources)
    return ExtensionStatus(True, fields["cuda"] == "1", fields["status"], archs, current, stale)
