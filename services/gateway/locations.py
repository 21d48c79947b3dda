"""Where slides and results are: checking an `s3://` location a client or an operator gave."""

from __future__ import annotations

from services.common.objectstore import NoSuchObjectError, parse_s3_uri
from services.gateway.errors import BadLocationError


def check_s3_uri(uri: str, key_required: bool = True) -> str:
    """`uri` when it is a well-formed `s3://bucket/key` (or `s3://bucket[/prefix]` without `key_required`)."""
    try:
        parse_s3_uri(uri, key_required)
    except NoSuchObjectError as e:  # the object store's name for a malformed URI: not a missing object here
        shape = "s3://bucket/key" if key_required else "s3://bucket or s3://bucket/prefix"
        raise BadLocationError(f"{uri}: not a well-formed S3 location; give {shape}") from e
    return uri
