"""Loading the compiled extension ``convmixer_fast._C`` without making it a requirement.

``import convmixer_fast`` never imports ``_C``; code that needs it calls ``extension_status()``
(what was built, or why it is missing) and gives the user that reason.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass


@dataclass(frozen=True)
class ExtensionStatus:
    loaded: bool
    with_cuda: bool
    detail: str  # what CUDA was built for / why not / why _C could not be loaded
    cuda_archs: tuple[str, ...] = ()  # the CUDA kernels' targets, e.g. ("80", "90a") (machine code only)


@functools.lru_cache(maxsize=None)
def extension_status() -> ExtensionStatus:
    try:
        from . import _C  # noqa: F401  (registers the convmixer_fast::* C++ ops)
        from . import _cuda_fakes  # noqa: F401  (their fake implementations)
    except ImportError as error:
        return ExtensionStatus(
            False, False,
            f"convmixer_fast._C is not built or failed to load ({error}); "
            "reinstall with: pip install --no-build-isolation .",
        )
    import torch

    fields = dict(item.split("=", 1) for item in torch.ops.convmixer_fast.build_info().split(";"))
    archs = tuple(arch for arch in fields.get("archs", "").split(",") if arch)  # (none from a _C built before)
    return ExtensionStatus(True, fields["cuda"] == "1", fields["status"], archs)
