"""Errors of the tiler service; every message names the slide and says what to do.

TilerError
 ├── SlideError                 the file is not a usable slide (HTTP 422)
 │    ├── SlideOpenError        not a slide, unsupported or truncated
 │    ├── MissingMppError       no resolution in the metadata and none given
 │    ├── SlideDimensionsError  zero-sized or absurd dimensions
 │    └── SlideQcError          the slide opens but fails quality control; `code` names the check
 │         ├── NotBrightfieldError       "not_brightfield": dark background (a fluorescence scan)
 │         ├── NotHematoxylinEosinError  "not_he": brown tissue (IHC/DAB), not pink-purple H&E
 │         ├── ImplausibleColoursError   "implausible_colours": the glass is not near-white and colourless
 │         └── NoTissueError             "no_tissue": nothing to score (no tissue, or all of it excluded)
 ├── TileOutOfRangeError        tile indices outside the plan (HTTP 422)
 ├── NoSuchTileError            a DeepZoom level, column or row the slide does not have (HTTP 404)
 └── StorageError               the slide cannot be fetched
      ├── SlideNotFoundError    no such file or object (HTTP 404)
      ├── StorageRefusedError   the object store refuses (access denied, bad keys) (HTTP 422)
      └── StorageUnavailableError  the object store cannot be reached (HTTP 503)
"""

from __future__ import annotations

from typing import ClassVar

from services.common.errors import PermanentError, TransientError


class TilerError(Exception):
    """Base class of every tiler error."""


class SlideError(TilerError, PermanentError):
    """The file exists but cannot be used as a slide."""


class SlideOpenError(SlideError):
    """Not a slide, an unsupported format, or a damaged file."""


class MissingMppError(SlideError):
    """The slide carries no microns-per-pixel and the caller gave none."""


class SlideDimensionsError(SlideError):
    """The slide's dimensions are zero or implausibly large."""


class SlideQcError(SlideError):
    """The slide opens but is not one the model can score; `code` is for machines."""

    code: ClassVar[str] = "slide_qc"


class NotBrightfieldError(SlideQcError):
    """The background is dark: a fluorescence (or otherwise non-brightfield) scan."""

    code: ClassVar[str] = "not_brightfield"


class NotHematoxylinEosinError(SlideQcError):
    """The tissue is brown (IHC/DAB) rather than the pink and purple of H&E."""

    code: ClassVar[str] = "not_he"


class ImplausibleColoursError(SlideQcError):
    """The glass is not near-white and colourless: the colours were decoded wrongly."""

    code: ClassVar[str] = "implausible_colours"


class NoTissueError(SlideQcError):
    """Tissue detection found nothing to score, or quality control excluded all of it."""

    code: ClassVar[str] = "no_tissue"


class TileOutOfRangeError(TilerError, PermanentError):
    """The request names tiles that the slide's plan does not have."""


class NoSuchTileError(TilerError, PermanentError):
    """A DeepZoom tile outside the slide's pyramid (a viewer asked past an edge or level)."""


class StorageError(TilerError):
    """The slide could not be fetched from storage."""


class SlideNotFoundError(StorageError, PermanentError):
    """No file or object at the given location."""


class StorageUnavailableError(StorageError, TransientError):
    """The object store did not answer or refused the request."""


class StorageRefusedError(StorageError, PermanentError):
    """The object store answered and refused: access denied, wrong keys, an invalid name."""


# Every slide-level quality-control refusal, each with its machine-readable `code`.
QC_REFUSALS: tuple[type[SlideQcError], ...] = (
    NotBrightfieldError,
    NotHematoxylinEosinError,
    ImplausibleColoursError,
    NoTissueError,
)
