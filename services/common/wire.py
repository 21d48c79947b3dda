"""What crosses between services, below the messages themselves: the media type and the error of a
malformed message (here so the web layer needs neither numpy nor the generated bindings)."""

from __future__ import annotations

from services.common.errors import PermanentError

PROTOBUF_CONTENT_TYPE = "application/x-protobuf"


class MessageError(ValueError, PermanentError):
    """A message that does not decode, or whose fields disagree (HTTP 400)."""
