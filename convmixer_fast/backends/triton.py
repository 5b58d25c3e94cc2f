"""The ``triton`` backend: the four fused Triton kernels of ``convmixer_fast.ops``.

Imported on first use only (it imports Triton and registers the ``convmixer_fast::triton_*`` ops).
"""

from ..ops.depthwise import depthwise_block
from ..ops.head import head
from ..ops.pointwise import VARIANTS, pointwise  # VARIANTS: the kernels' other forms (Backend.load_variants)
from ..ops.stem import stem
from . import BackendOps

OPS = BackendOps(stem, depthwise_block, pointwise, head)
__all__ = ["OPS", "VARIANTS"]
