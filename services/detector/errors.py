"""Errors of the detector service.

DetectorError
 ├── ModelError              the model file or its metadata is unusable (HTTP 422 / 404)
 │    └── UnknownModelError  no such model (HTTP 404)
 └── InferenceServerError    the inference server failed (HTTP 503)
      └── InferenceTimeoutError  it did not answer in time (HTTP 504)
"""

from __future__ import annotations

from services.common.errors import PermanentError, TransientError


class DetectorError(Exception):
    """Base class of every detector error."""


class ModelError(DetectorError, PermanentError):
    """The model cannot be loaded or does not follow the mitoscope ONNX contract."""


class UnknownModelError(ModelError):
    """No model of that name or path."""


class InferenceServerError(DetectorError, TransientError):
    """The inference server is unreachable or returned an error."""


class InferenceTimeoutError(InferenceServerError):
    """The inference server did not answer within the timeout."""
