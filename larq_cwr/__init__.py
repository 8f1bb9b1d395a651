"""larq_cwr: on-device continual learning with binary neural networks (CWR* on Larq)."""

from larq_cwr._compat import ensure_legacy_keras

ensure_legacy_keras()

__version__ = "0.1.0"
