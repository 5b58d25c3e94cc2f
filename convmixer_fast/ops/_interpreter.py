"""Whether Triton runs in its CPU interpreter; torch-only, so the registry can ask without Triton."""

import os


def is_interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
