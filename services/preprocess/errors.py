"""Errors of the preprocess service.

PreprocessError
 └── NormalisationError   bad colour statistics or input image (HTTP 422)
"""

from __future__ import annotations

from services.common.errors import PermanentError


class PreprocessError(Exception):
    """Base class of every preprocess error."""


class NormalisationError(PreprocessError, PermanentError):
    """The image or the colour statistics cannot be used for normalisation."""
