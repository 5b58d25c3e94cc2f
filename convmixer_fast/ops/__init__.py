"""Fused kernels, one module per op, and their PyTorch references (``ops.reference``).

The Triton op modules (``stem``, ``depthwise``, ``pointwise``, ``head``) import Triton and register
``convmixer_fast::triton_*`` ops; they are imported lazily by the triton backend, never by
``import convmixer_fast``.
"""
