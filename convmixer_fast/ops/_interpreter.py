"""Whether Triton runs in its CPU interpreter; torch-only, so the registry can ask without Triton."""

import os

# The values of TRITON_INTERPRET that Triton takes as on (its knobs' getenv_bool, triton 3.6 and
# 3.9), in any case: "true" runs the kernels in the interpreter as "1" does.
TRUE_SPELLINGS = ("1", "true", "on", "yes", "y")


def is_interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``, or ``true``...)."""
    return os.environ.get("TRITON_INTERPRET", "").lower() in TRUE_SPELLINGS
