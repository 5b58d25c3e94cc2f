"""convmixer_fast: a fused-kernel inference engine for ConvMixer.

    import convmixer_fast
    model = convmixer_fast.ConvMixer.from_eager(eager_model).cuda().half().eval()
    logits = model(images)

See README.md for the backends, build switches and environment variables.
"""

__version__ = "0.1.0"

from .backends import BackendUnavailableError
from .configs import MODEL_CONFIGS, create_model
from .convert import UnsupportedModelError
from .model import ConvMixer, InferenceOnlyError, InputError
from .weights import CheckpointError, load_checkpoint

__all__ = [
    "ConvMixer",
    "create_model",
    "load_checkpoint",
    "MODEL_CONFIGS",
    "CheckpointError",
    "InputError",
    "InferenceOnlyError",
    "BackendUnavailableError",
    "UnsupportedModelError",
    "__version__",
]
