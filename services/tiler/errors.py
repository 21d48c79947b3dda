"""Errors of the tiler service; every message names the slide and says what to do.

TilerError
 ├── SlideError                 the file is not a usable slide (HTTP 422)
 │    ├── SlideOpenError        not a slide, unsupported or truncated
 │    ├── MissingMppError       no resolution in the metadata and none given
 │    └── SlideDimensionsError  zero-sized or absurd dimensions
 └── StorageError               the slide cannot be fetched
      ├── SlideNotFoundError    no such file or object (HTTP 404)
      ├── StorageRefusedError   the object store refuses (access denied, bad keys) (HTTP 422)
      └── StorageUnavailableError  the object store cannot be reached (HTTP 503)
"""

from __future__ import annotations


class TilerError(Exception):
    """Base class of every tiler error."""


class SlideError(TilerError):
    """The file exists but cannot be used as a slide."""


class SlideOpenError(SlideError):
    """Not a slide, an unsupported format, or a damaged file."""


class MissingMppError(SlideError):
    """The slide carries no microns-per-pixel and the caller gave none."""


class SlideDimensionsError(SlideError):
    """The slide's dimensions are zero or implausibly large."""


class StorageError(TilerError):
    """The slide could not be fetched from storage."""


class SlideNotFoundError(StorageError):
    """No file or object at the given location."""


class StorageUnavailableError(StorageError):
    """The object store did not answer or refused the request."""


class StorageRefusedError(StorageError):
    """The object store answered and refused: access denied, wrong keys, an invalid name."""
