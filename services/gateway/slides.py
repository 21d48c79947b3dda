"""Slides the gateway knows: the slides table (`SlideStore`), and taking a slide in.

A slide comes in by registration (`register`: an `s3://` object, or a file under the slide root)
or by upload (`receive_upload`: streamed to disk, size-limited, SHA-256 recorded, then kept under
the slide root or put in S3 when `GATEWAY_UPLOAD_LOCATION` is an `s3://` prefix).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, MetaData, String, Table, Text, insert, select
from sqlalchemy.engine import Engine

from services.common import objectstore
from services.common.objectstore import S3Config, is_s3_uri
from services.gateway.database import widen_big_integers
from services.gateway.errors import BadRequestError, UnknownSlideError
from services.gateway.locations import check_s3_uri
from services.gateway.settings import Settings
from services.gateway.uploads import UploadStorageError, receive_multipart
from services.watcher import SLIDE_SUFFIXES, is_slide_name

metadata = MetaData()
slides_table = Table(
    "slides",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", Text, nullable=False),
    Column("location", Text, nullable=False),
    Column("sha256", String(64), nullable=True),
    Column("size_bytes", BigInteger, nullable=True),  # slides are many GB
    Column("created_at", DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class Slide:
    id: str
    name: str
    location: str  # s3://bucket/key, or a path relative to the slide root
    sha256: str | None
    size_bytes: int | None
    created_at: datetime


def _slide(row: Any) -> Slide:
    return Slide(row.id, row.name, row.location, row.sha256, row.size_bytes, row.created_at)


class SlideStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        metadata.create_all(engine)
        widen_big_integers(engine, slides_table)

    def add(self, name: str, location: str, sha256: str | None, size_bytes: int | None) -> Slide:
        slide_id = str(uuid.uuid4())
        with self.engine.begin() as conn:
            conn.execute(
                insert(slides_table).values(
                    id=slide_id,
                    name=name,
                    location=location,
                    sha256=sha256,
                    size_bytes=size_bytes,
                    created_at=datetime.now(UTC),
                )
            )
        return self.get(slide_id)

    def get(self, slide_id: str) -> Slide:
        with self.engine.begin() as conn:
            row = conn.execute(select(slides_table).where(slides_table.c.id == slide_id)).one_or_none()
        if row is None:
            raise UnknownSlideError(f"no slide {slide_id!r}; register or upload it with POST /v1/slides")
        return _slide(row)

    def list(self) -> list[Slide]:
        """Every slide, newest first."""
        with self.engine.begin() as conn:
            rows = conn.execute(select(slides_table).order_by(slides_table.c.created_at.desc())).all()
        return [_slide(r) for r in rows]


def register(store: SlideStore, slide_root: Path, location: str, name: str | None = None) -> Slide:
    """Add a slide that is already in place: an S3 object, or a file under the slide root."""
    if is_s3_uri(location):
        check_s3_uri(location)  # before the store is asked: a malformed URI is no missing object
        try:
            found = objectstore.stat(location, S3Config.from_env())
        except objectstore.NoSuchObjectError as e:
            raise BadRequestError(f"{location}: no such object; upload it, or check the key") from e
        size: int | None = found.size_bytes
    else:
        root = slide_root.resolve()
        path = (root / location).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise BadRequestError(f"{location}: not a file under the slide root; upload it instead")
        size = path.stat().st_size
    return store.add(name or location.rsplit("/", 1)[-1], location, None, size)


async def receive_upload(
    store: SlideStore, settings: Settings, content_type: str, body: AsyncIterator[bytes], expected_sha256: str | None
) -> Slide:
    """Stream an upload to disk, check it, then keep it under the slide root or put it in S3."""
    folder_id = uuid.uuid4().hex
    folder = settings.slide_root / "uploads" / folder_id
    try:
        folder.mkdir(parents=True)
    except OSError as e:
        raise UploadStorageError(f"the gateway cannot store uploads under {folder.parent}: {e}") from e
    put_in_s3: str | None = None  # where the upload went when it went to S3
    try:  # one clean-up for every way an upload can end early, a dropped connection included
        received = await receive_multipart(content_type, body, folder, settings.max_upload_bytes)
        if not is_slide_name(received.name):
            raise BadRequestError(
                f"{received.name!r}: not a slide file name; use one ending in {', '.join(SLIDE_SUFFIXES)}"
            )
        if received.size_bytes == 0:
            raise BadRequestError(f"{received.name}: empty upload")
        if expected_sha256 and expected_sha256.lower() != received.sha256:
            raise BadRequestError(
                f"{received.name}: checksum mismatch (sent {expected_sha256}, received {received.sha256})"
            )
        final = received.path.with_name(received.name)
        received.path.rename(final)
        location = str(final.relative_to(settings.slide_root))
        if settings.upload_location:
            location = f"{settings.upload_location.rstrip('/')}/{folder_id}/{received.name}"
            try:
                await asyncio.to_thread(objectstore.put_file, location, final, S3Config.from_env())
                put_in_s3 = location
            except (objectstore.ObjectStoreRefusedError, objectstore.NoSuchObjectError) as e:
                # The gateway's own upload location, not the client's doing: an operator's problem.
                raise objectstore.ObjectStoreUnavailableError(f"the upload location refuses uploads: {e}") from e
        slide = await asyncio.to_thread(store.add, received.name, location, received.sha256, received.size_bytes)
    except BaseException:  # the stored copy goes too: a slide that is not in the store is not kept
        if put_in_s3:
            with contextlib.suppress(objectstore.ObjectStoreError):
                await asyncio.to_thread(objectstore.delete, put_in_s3, S3Config.from_env())
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if put_in_s3:  # the S3 copy is the slide; the local one was only on its way
        shutil.rmtree(folder, ignore_errors=True)
    return slide
