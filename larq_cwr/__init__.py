"""larq_cwr: on-device continual learning with binary neural networks (CWR* on Larq)."""

from larq_cwr._compat import ensure_legacy_keras, import_tensorflow_quietly

ensure_legacy_keras()
import_tensorflow_quietly()

from larq_cwr import quantizers  # noqa: E402
from larq_cwr.callbacks import CWRStar, count_classes  # noqa: E402
from larq_cwr.head import CWRStarHead  # noqa: E402
from larq_cwr.quantizers import (  # noqa: E402
    FakeQuantizer,
    fake_quantize,
    stochastic_quantize,
)
from larq_cwr.training import HybridQuantizedTrainStep  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "CWRStar",
    "CWRStarHead",
    "FakeQuantizer",
    "HybridQuantizedTrainStep",
    "count_classes",
    "fake_quantize",
    "quantizers",
    "stochastic_quantize",
    "__version__",
]
