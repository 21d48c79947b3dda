"""Errors of the aggregator service.

AggregatorError
 ├── GradingParameterError   an unsupported field diameter or window (HTTP 422)
 └── ExportLocationError     an output location the aggregator may not write (HTTP 422)
"""

from __future__ import annotations

from services.common.errors import PermanentError


class AggregatorError(Exception):
    """Base class of every aggregator error."""


class GradingParameterError(AggregatorError, PermanentError):
    """A grading parameter (e.g. the microscope's field diameter) is not supported."""


class ExportLocationError(AggregatorError, PermanentError):
    """The output location is outside the aggregator's output root or not a valid S3 prefix."""
