"""Streaming slide uploads: a multipart/form-data body parsed as it arrives, never held in memory.

The `file` part is written to disk chunk by chunk while its size is checked against the limit and
its SHA-256 computed; a body over the limit is refused at the chunk that crosses it. Whatever
ends the upload early (too large, a checksum mismatch, a dropped connection) removes the partial
file.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header

FILE_FIELD = "file"
MAX_NAME_BYTES = 200  # file systems take 255, and ".partial" is appended while it arrives
FORM_OVERHEAD_BYTES = 1024 * 1024  # boundaries, part headers and small fields around the file


class UploadError(ValueError):
    """The upload is malformed (HTTP 400)."""


class UploadTooLargeError(ValueError):
    """An upload exceeds the size limit (HTTP 413)."""


class UploadStorageError(OSError):
    """The gateway could not write the upload (disk full, name too long): HTTP 507."""


@dataclass(frozen=True)
class ReceivedFile:
    path: Path
    name: str
    sha256: str
    size_bytes: int


class _FilePart:
    """Collects one multipart part: its headers, and its data into `folder` when it is the file."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder, self.max_bytes = folder, max_bytes
        self.headers: dict[bytes, bytes] = {}
        self._field, self._value = b"", b""
        self.name: str | None = None
        self.path: Path | None = None
        self.size = 0
        self.digest = hashlib.sha256()
        self._out: Any = None
        self.received: ReceivedFile | None = None

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda data, start, end: self._append("_field", data[start:end]),
            "on_header_value": lambda data, start, end: self._append("_value", data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._end,
        }

    def _append(self, attribute: str, data: bytes) -> None:
        setattr(self, attribute, getattr(self, attribute) + data)

    def _begin(self) -> None:
        self.headers, self._field, self._value, self.name = {}, b"", b"", None

    def _header_end(self) -> None:
        self.headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        if options.get(b"name", b"").decode() != FILE_FIELD:
            return  # other form fields are ignored
        if self.received is not None or self._out is not None:
            raise UploadError(f"send one slide per upload, in the {FILE_FIELD!r} field")
        filename = options.get(b"filename", b"").decode("utf-8", "replace")
        name = Path(filename.replace("\\", "/")).name
        if not name:
            raise UploadError(f"the {FILE_FIELD!r} part has no filename")
        if len(name.encode()) > MAX_NAME_BYTES:
            raise UploadError(f"the file name is {len(name.encode())} bytes long; use at most {MAX_NAME_BYTES}")
        self.name = name
        self.path = self.folder / f"{name}.partial"
        self._out = self.path.open("wb")

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._out is None:
            return
        self.size += end - start
        if self.size > self.max_bytes:
            raise UploadTooLargeError(f"{self.name}: more than {self.max_bytes} bytes")
        chunk = data[start:end]
        self.digest.update(chunk)
        self._out.write(chunk)

    def _end(self) -> None:
        if self._out is None:
            return
        self._out.close()
        self._out = None
        assert self.path is not None and self.name is not None
        self.received = ReceivedFile(self.path, self.name, self.digest.hexdigest(), self.size)

    def close(self, quietly: bool = False) -> None:
        """Close the file being written; `quietly` when another error is already on its way."""
        out, self._out = self._out, None
        if out is None:
            return
        try:
            out.close()
        except OSError:
            if not quietly:
                raise


async def receive_multipart(
    content_type: str, body: AsyncIterator[bytes], folder: Path, max_bytes: int
) -> ReceivedFile:
    """Stream the `file` part of a multipart/form-data body into `folder`/<name>.partial."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise UploadError("multipart/form-data without a boundary")
    part = _FilePart(folder, max_bytes)
    parser = MultipartParser(boundary, part.callbacks())  # type: ignore[arg-type]
    received_bytes = 0
    parsed = False
    try:
        async for chunk in body:
            received_bytes += len(chunk)
            if received_bytes > max_bytes + FORM_OVERHEAD_BYTES:
                raise UploadTooLargeError(f"a multipart body of more than {max_bytes + FORM_OVERHEAD_BYTES} bytes")
            parser.write(chunk)
        parser.finalize()
        parsed = True
    except (UploadError, UploadTooLargeError):
        raise
    except OSError as e:
        raise UploadStorageError(f"the gateway cannot store the upload: {e}") from e
    except Exception as e:  # the parser's own errors: a body that is not valid multipart
        raise UploadError(f"malformed multipart body: {e}") from e
    finally:
        if not parsed:
            part.close(quietly=True)  # the error on its way says what went wrong
    try:
        part.close()
    except OSError as e:  # the last bytes could not be flushed: the disk is full
        raise UploadStorageError(f"the gateway cannot store the upload: {e}") from e
    if part.received is None:
        raise UploadError(f"no {FILE_FIELD!r} part with a filename: send the slide as -F {FILE_FIELD}=@slide.svs")
    return part.received
